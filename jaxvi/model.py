"""The model: a pure log-joint for one datum, a latent spec, and an initialiser.

This module also holds the checks run at the boundary, before anything is compiled: data,
keys and a model's outputs are validated here, and every failure is a ``ValueError`` that names
the argument, what was expected and what came.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax._src.core as jax_core  # its trace_state_clean: whether a transformation is tracing (no public equivalent)
import jax.numpy as jnp
import numpy as np

from jaxvi import equality
from jaxvi.data import Sequences
from jaxvi.latents import (EXPONENTIAL_FAMILY_SPECS, Gaussian, Markov, Real, exact_family, is_spec, split_latent,
                           value_shape)

__all__ = ["DatumShapes", "Model", "check_data", "check_init_params", "check_key", "check_model",
           "check_params_fit_data", "check_new_data", "check_values", "datum_shapes", "fitted_params", "is_traced",
           "validate_data"]

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    r"""A latent-variable model written as a pure function of one datum.

    Args:
      log_joint: ``log_joint(params, z, x) -> scalar``, the log density
        :math:`\log p_\theta(x_i, z_i)` of ONE datum ``x`` (a slice along the leading axis of every
        leaf of the data) and one latent value ``z``. Plain ``jax.numpy``; no side effects.
        jaxvi vmaps it over data and latent values.
      latent: the latent spec, e.g. ``jaxvi.Discrete(K)``, or a pytree of specs.
      init: ``init(key, data) -> params``, the initial parameters :math:`\theta_0` (any pytree).
        Parameters optimised by gradient (EM without a closed-form M-step) should be unconstrained
        reals: write logits, log-scales and Cholesky factors, and map them inside ``log_joint``.
      log_prior: optional ``log_prior(params) -> scalar``; fitting then maximises
        :math:`\log p(D \mid \theta) + \log p(\theta)` (MAP) instead of the likelihood.
      validate: optional ``validate(data)``, raising ``ValueError`` for data outside the model's support, which
        ``log_joint`` would take without complaint (symbols beyond the alphabet, a gather XLA clamps; negative
        counts; values outside [0, 1] for Bernoulli likelihoods). jaxvi calls it on concrete data at every boundary
        (``infer``, ``Result.posterior``, ``evidence``) before anything compiles, and not inside a user's trace
        (``jaxvi.check_values`` does the usual checks).

    Models compare structurally (``jaxvi.equality``): two built of the same functions (the same
    ``def`` or ``lambda``, with equal captured values) and equal latent specs are equal, so a fresh
    ``Model`` of the same parts reuses the compiled code of the last.

    Example:
      >>> def log_joint(params, z, x):
      ...     log_w = jax.nn.log_softmax(params["logits"])
      ...     return log_w[z] + jax.scipy.stats.norm.logpdf(x, params["loc"][z]).sum()
      >>> model = jaxvi.Model(log_joint, jaxvi.Discrete(2), init=lambda key, data: {
      ...     "logits": jnp.zeros(2), "loc": jax.random.normal(key, (2, data.shape[1]))})
    """

    log_joint: Callable[[PyTree, PyTree, PyTree], jax.Array]
    latent: Any
    init: Callable[[jax.Array, PyTree], PyTree]
    log_prior: Callable[[PyTree], jax.Array] | None = None
    validate: Callable[[PyTree], None] | None = None

    def __post_init__(self):
        for name in ("log_joint", "init"):
            if not callable(getattr(self, name)):
                raise ValueError(f"Model({name}): expected a function, got {getattr(self, name)!r}")
        for name in ("log_prior", "validate"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ValueError(f"Model({name}): expected a function or None, got {getattr(self, name)!r}")

    def __eq__(self, other) -> bool:
        return isinstance(other, Model) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @functools.cached_property
    def _key(self):
        """The structural key (``jaxvi.equality.key``), made once: when a fit first looks the model up."""
        return equality.key(self)

    def total_log_prior(self, params: PyTree) -> jax.Array:
        """``log_prior(params)``, or 0 for maximum likelihood."""
        return jnp.zeros(()) if self.log_prior is None else self.log_prior(params)


def is_traced(*trees: PyTree) -> bool:
    """Whether ``infer`` (or a posterior, an evidence) runs inside a user's jit, vmap or other transformation: a leaf
    is a tracer, or JAX is tracing now (a user's jit of a function that closes over concrete fits and data)."""
    if not getattr(jax_core, "trace_state_clean", lambda: True)():  # without it (a later JAX): the leaves alone
        return True
    return any(isinstance(leaf, jax.core.Tracer) for tree in trees for leaf in jax.tree_util.tree_leaves(tree))


def check_data(data: PyTree) -> PyTree:
    """Validates ``data``: a non-empty pytree of numeric arrays sharing a leading datum axis.

    A list of Python numbers, or of lists of them (``x.tolist()``), is one array (as NumPy reads it), not a pytree
    of scalars; other lists and tuples are pytrees of data (``(X, y)``).

    Returns:
      The data with every leaf a ``jax.Array``.

    Raises:
      ValueError: no leaves, a non-numeric leaf, a leaf of rank 0, leading axes of different
        sizes, zero data, or (when the values are concrete) a NaN or infinite value.
    """
    if isinstance(data, Sequences):
        return _check_sequences(data)
    if isinstance(data, list) and data and all(isinstance(leaf, (bool, int, float, np.number))
                                               for leaf in jax.tree_util.tree_leaves(data)):
        try:
            data = np.asarray(data)
        except ValueError as err:
            raise ValueError(f"data: expected a list of numbers, or of equal-length lists of them (one array), got "
                             f"a ragged list ({err})") from None
    leaves, treedef = jax.tree_util.tree_flatten(data)
    if not leaves:
        raise ValueError("data: expected an array or a pytree of arrays, got an empty pytree")
    paths = ["data" + jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(data)[0]]
    arrays = []
    for path, leaf in zip(paths, leaves):
        if not isinstance(leaf, jax.Array):  # jax arrays stay where they are (a sharded one stays sharded)
            leaf = np.asarray(leaf)
        if not isinstance(leaf, jax.core.Tracer):
            _check_dtype(path, leaf.dtype)
        if leaf.ndim == 0:
            raise ValueError(f"{path}: expected a leading datum axis (rank >= 1), got a scalar")
        arrays.append(leaf)
    sizes = {path: a.shape[0] for path, a in zip(paths, arrays)}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"data: every leaf needs the same leading (datum) axis, got sizes {sizes}")
    if arrays[0].shape[0] == 0:
        raise ValueError(f"data: expected at least one datum, got leading axis of size 0 (shape {arrays[0].shape})")
    # arrays in this process's host memory are checked there (no compiling); others (on an accelerator, or spanning
    # several processes' devices) in one compiled call
    checked = [(path, a, _in_host_memory(a)) for path, a in zip(paths, arrays)
               if not isinstance(a, jax.core.Tracer) and np.issubdtype(a.dtype, np.inexact)]
    on_device = [a for _, a, in_host in checked if not in_host]
    if on_device:
        with jax.ensure_compile_time_eval():  # concrete data, also when infer is traced over other arguments
            device_finite = iter(np.asarray(_all_finite(on_device)))
    for path, a, in_host in checked:
        if not (np.isfinite(np.asarray(a)).all() if in_host else next(device_finite)):
            bad = np.argwhere(~np.isfinite(np.asarray(a)))[0]
            raise ValueError(f"{path}: expected finite values, got {np.asarray(a)[tuple(bad)]} at index "
                             f"{tuple(bad.tolist())}")
    return jax.tree_util.tree_unflatten(treedef, [_as_jax_array(a) for a in arrays])


def _as_jax_array(value) -> jax.Array:
    """``jnp.asarray(value)`` without its staging program: JAX compiled a small program for each new shape and dtype
    of NumPy array it staged (12-35 ms); ``device_put`` makes the same array (float64 to float32 with x64 off). A JAX
    array stays itself (in a user's trace too)."""
    return value if isinstance(value, jax.Array) else jax.device_put(value)


def check_new_data(model: Model, params: PyTree, data: PyTree, fitted: DatumShapes | None = None) -> PyTree:
    """``check_data``, then ``check_datum_shapes`` (against ``fitted``, the shapes of a datum of the data the fit
    was given, where known), ``check_params_fit_data`` and ``validate_data``: data handed to a fitted model (a
    posterior, an evidence, a bound on held-out data). Returns the data as ``check_data`` does."""
    if not isinstance(model, Model):
        raise ValueError(f"model: expected a jaxvi.Model (a zoo fit's .model), got {type(model).__name__}")
    data = check_data(data)
    check_datum_shapes(model, data, fitted)
    if not is_traced(data, params):
        check_params_fit_data(model, params, data)
    validate_data(model, data)
    return data


class DatumShapes(NamedTuple):
    """The shapes of one datum of a fit's data (static and hashable: a ``Result`` keeps them): the data's tree
    structure and every leaf's shape without its leading datum axis."""

    treedef: Any
    shapes: tuple


def datum_shapes(data: PyTree) -> DatumShapes:
    """The ``DatumShapes`` of ``data`` (checked data: every leaf with a leading datum axis)."""
    leaves, treedef = jax.tree_util.tree_flatten(data)
    return DatumShapes(treedef, tuple(tuple(jnp.shape(leaf)[1:]) for leaf in leaves))


def check_datum_shapes(model: Model, data: PyTree, fitted: DatumShapes | None) -> None:
    """Raises ValueError where a datum of ``data`` is not shaped as one of the data the fit was given (``fitted``;
    nothing is compared where that is None): another tree structure, or a leaf of another shape, its time axis (the
    first after the datum axis) excepted for a model with a ``Markov`` latent, whose sequences may be of any length.
    A posterior of one datum handed without its datum axis (a GMM's ``x[0]``, one ``(T, D)`` sequence) would
    otherwise be read as that many data of smaller shape, and broadcast against the parameters."""
    if fitted is None:
        return
    leaves, treedef = jax.tree_util.tree_flatten_with_path(data)
    if treedef != fitted.treedef:
        raise ValueError(f"data: expected data of the structure the model was fitted to, {fitted.treedef}, got "
                         f"{treedef}")
    timed = any(isinstance(leaf, Markov) for leaf in jax.tree_util.tree_leaves(model.latent, is_leaf=is_spec))
    for (path, leaf), want in zip(leaves, fitted.shapes):
        have = tuple(jnp.shape(leaf)[1:])
        if len(have) == len(want) and have[timed:] == want[timed:]:
            continue
        expected = f"(T, {', '.join(map(str, want[1:]))})" if timed and want else str(want)
        one = " (a single datum needs its leading datum axis: data[None])" if len(have) + 1 == len(want) else ""
        raise ValueError(f"data{jax.tree_util.keystr(path)}: expected every datum of shape {expected}, as the data "
                         f"the model was fitted to{' (T: any length)' if timed and want else ''}, got data of shape "
                         f"{tuple(jnp.shape(leaf))}, a datum of shape {have}{one}")


def validate_data(model: Model, data: PyTree) -> None:
    """``model.validate(data)`` (its support), where the model has one and the data are concrete."""
    if model.validate is not None and not is_traced(data):
        model.validate(data)


def check_values(data: PyTree, what: str, low=None, high=None, *, integer: bool = False, inclusive: bool = False,
                 name: str = "data") -> None:
    """Raises ValueError naming the first value of ``data`` (every leaf; a ``Sequences``' real steps alone) below
    ``low`` or at or above ``high`` (above, with ``inclusive``), or not a whole number with ``integer``: a model's
    ``validate``. Arrays in this process's host memory are read there, others reduced in one compiled call first."""
    real = None
    if isinstance(data, Sequences):
        real = np.arange(jax.tree_util.tree_leaves(data.obs)[0].shape[1]) < np.asarray(data.lengths)[:, None]
        data, name = data.obs, f"{name}.obs"
    for path, a in jax.tree_util.tree_flatten_with_path(data)[0]:
        if not _in_host_memory(a) and _within(a, low, high, integer, inclusive):
            continue
        values = np.asarray(a)
        bad = np.zeros(values.shape, bool)
        if low is not None:
            bad |= values < low
        if high is not None:
            bad |= values > high if inclusive else values >= high
        if integer and np.issubdtype(values.dtype, np.inexact):
            bad |= values != np.round(values)
        if real is not None:
            bad &= real.reshape(real.shape + (1,) * (values.ndim - 2))
        if bad.any():
            at = np.argwhere(bad)[0]
            interval = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}"
            interval += "]" if inclusive and high is not None else ")"
            whole = " (whole numbers)" if integer else ""
            raise ValueError(f"{name}{jax.tree_util.keystr(path)}: expected {what}{whole} in {interval}, got "
                             f"{values[tuple(at)]} at index {tuple(at.tolist())}")


def _within(a: jax.Array, low, high, integer: bool, inclusive: bool) -> bool:
    """Whether every value of a device array is within the bounds (padding included: a ``Sequences``' padding
    outside them is then looked at on the host, as a failure would be)."""
    least, most, whole = (np.asarray(v).item() for v in _extremes(a))
    return ((low is None or least >= low) and (high is None or (most <= high if inclusive else most < high))
            and (whole or not integer))


@jax.jit
def _extremes(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return jnp.min(a), jnp.max(a), jnp.all(a == jnp.round(a)) if jnp.issubdtype(a.dtype, jnp.inexact) else True


def _in_host_memory(a) -> bool:
    """A NumPy array, or a JAX array of this process's CPUs alone (not one spanning other processes' devices)."""
    return isinstance(a, np.ndarray) or (a.is_fully_addressable and all(d.platform == "cpu" for d in a.devices()))


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    """Whether each array is finite everywhere: one compiled call for all the data's leaves."""
    return jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves])


def _check_dtype(path: str, dtype) -> None:
    """Data are float32 or float64, integers or booleans. float16 and bfloat16 keep 3 and 2 significant digits, too few
    for the sums over data and the linear algebra of a fit (LAPACK has no float16: XLA would refuse it deep inside)."""
    dtype = np.dtype(dtype)
    if not dtype.isnative:  # JAX takes arrays in this machine's byte order only
        raise ValueError(f"{path}: expected values in this machine's byte order, got dtype {dtype.str}; "
                         f"convert: .astype(numpy.{dtype.newbyteorder('=').name})")
    if dtype in (np.float32, np.float64) or np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return
    if jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{path}: expected float32 or float64 values, got {dtype}, too coarse for a fit's sums and "
                         f"linear algebra; cast it: .astype(numpy.float32)")
    raise ValueError(f"{path}: expected a numeric array, got dtype {dtype}")


def _check_sequences(data: Sequences) -> Sequences:
    """Validates padded sequences: the observations as data of shape (N, T, ...), the lengths in [1, T]."""
    obs = check_data(data.obs)
    shapes = [a.shape for a in jax.tree_util.tree_leaves(obs)]
    if any(len(shape) < 2 for shape in shapes):
        raise ValueError(f"data.obs: expected sequences, leaves of shape (N, T, ...), got shapes {shapes}")
    n, t = shapes[0][:2]
    if any(shape[1] != t for shape in shapes):
        raise ValueError(f"data.obs: every leaf needs the same time axis (axis 1), got shapes {shapes}")
    if isinstance(data.lengths, jax.core.Tracer):
        return Sequences(obs, data.lengths.astype(jnp.int32))
    lengths = np.asarray(data.lengths)
    if not np.issubdtype(lengths.dtype, np.integer) or lengths.shape != (n,):
        raise ValueError(f"data.lengths: expected {n} integers (one per sequence), got dtype "
                         f"{lengths.dtype} and shape {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > t:
        bad = int(np.argmax((lengths < 1) | (lengths > t)))
        raise ValueError(f"data.lengths: expected lengths in [1, {t}] (the padded length), got "
                         f"{lengths[bad]} for sequence {bad}")
    return Sequences(obs, _as_jax_array(lengths.astype(np.int32)))


def check_key(key) -> jax.Array:
    """Validates ``key`` and returns it as a typed PRNG key.

    Accepts a typed key (``jax.random.key``) or a legacy raw key (``jax.random.PRNGKey``:
    uint32 of shape (2,)).
    """
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key: expected one PRNG key (shape ()), got shape {key.shape}")
        return key
    if dtype is not None and dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return jax.random.wrap_key_data(key)
    raise ValueError(
        "key: expected a PRNG key from jax.random.key(seed) or jax.random.PRNGKey(seed), "
        f"got {type(key).__name__} with dtype {dtype} and shape {getattr(key, 'shape', None)}"
    )


def check_model(model: Model, data: PyTree, key: jax.Array, params: PyTree | None = None, *,
                like_init: bool = True) -> PyTree:
    """Traces ``init`` and one call of ``log_joint`` abstractly (no compilation) and checks them. Its outcome depends
    on the model and on the shapes and dtypes of its arguments alone, never on their values (those of ``params``:
    ``check_init_params``).

    Args:
      model: the model.
      data: validated data.
      key: a typed key.
      params: initial parameters given by the user, or None to use ``model.init``.
      like_init: check ``params`` against ``init(key, data)``'s (shapes and float types: initial parameters);
        False for a fit's parameters handed back (``jaxvi.evidence``), whose shapes ``check_params_fit_data`` checks.

    Returns:
      The abstract parameters (``jax.ShapeDtypeStruct`` leaves).

    Raises:
      ValueError: ``init`` or ``log_joint`` fails on these data, or ``log_joint`` does not return a
        real scalar.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model: expected a jaxvi.Model, got {type(model).__name__}")
    parts = split_latent(model.latent)
    family = None if parts.local is None else _family(parts.local)
    if family in ("markov", "chains"):
        obs = data.obs if isinstance(data, Sequences) else data
        shapes = [a.shape for a in jax.tree_util.tree_leaves(obs)]
        if any(len(shape) < 2 for shape in shapes):
            raise ValueError(f"data: a Markov latent needs sequences, every leaf of shape (N, T, ...) "
                             f"(sequences, steps, ...), got shapes {shapes}")
    if params is None:
        try:
            params = jax.eval_shape(model.init, key, data)
        except Exception as err:
            raise ValueError(f"init: init(key, data) failed on data of shapes {_shapes(data)}: {err}") from err
    elif like_init:
        _check_like_init(model, key, data, params)
    for node in parts.globals:
        _check_scalar(node.log_prior, (params, _continuous_value(node.latent)), "Global(log_prior)",
                      "log_prior(params, z)")
    z_global = _continuous_value(parts.global_latent) if parts.globals else None
    if family in ("markov", "chains"):
        datum = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[2:], a.dtype), obs)
        state = jax.ShapeDtypeStruct((), jnp.int32)
        pair = lambda previous: (previous, state) if family == "markov" else jax.tree_util.tree_map(  # noqa: E731
            lambda spec: (previous, state), parts.local, is_leaf=is_spec)
        trials = [(pair(None), "one step x (z = (None, state) per chain)"),
                  (pair(state), "one step x (z = (state, state) per chain)")]
    else:
        datum = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), data)
        if family is None:
            z = None
        elif family == "discrete":
            z = jax.tree_util.tree_map(lambda spec: jax.ShapeDtypeStruct((), jnp.int32), parts.local, is_leaf=is_spec)
        else:  # Gaussian, continuous Real specs, or exponential-family factors
            z = _continuous_value(parts.local)
        trials = [(z, "one datum x")]
    trials = [(parts.combine(z_global, z), what) for z, what in trials]
    for z, what in trials:
        try:
            out = jax.eval_shape(model.log_joint, params, z, datum)
        except Exception as err:
            raise ValueError(
                f"log_joint: log_joint(params, z, x) failed for {what} of shapes {_shapes(datum)} "
                f"(data shapes {_shapes(data)}): {err}") from err
        if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
            raise ValueError(f"log_joint: expected a scalar log density for {what.removesuffix(' x')}, got {getattr(out, 'shape', out)}")
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"log_joint: expected a real floating-point scalar, got dtype {out.dtype}")
        if jnp.finfo(out.dtype).bits < 32:  # a bfloat16 log-joint kept 3 digits: objectives off by 0.1 nats, silently
            raise ValueError(f"log_joint: expected a float32 or float64 scalar, got {out.dtype}, too coarse for a "
                             f"fit's sums; compute it in float32 (.astype(jnp.float32) on the half-precision "
                             f"values it reads)")
    return params


def fitted_params(model: Model, params: PyTree, data: PyTree) -> PyTree:
    """A fit's parameters handed back (``jaxvi.evidence``, ``jaxvi.exact.posterior``), as arrays: checked as
    ``init_params`` are (named ``params``), and, outside a trace, the log-joint traced once at their shapes
    (``check_model``, not compared with ``init``'s: ``check_params_fit_data`` compares the data's shapes)."""
    check_init_params(params, "params")
    params = jax.tree_util.tree_map(jnp.asarray, params)  # lists of numbers, as infer's init_params take them
    if not is_traced(params, data):
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
        check_model(model, data, jax.random.key(0), abstract, like_init=False)
    return params


def check_init_params(params: PyTree, name: str = "init_params") -> None:
    """Raises ValueError unless every leaf of ``init_params`` (named ``name``) is a numeric array jax can hold, and
    a concrete floating one is finite."""
    argument = name
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = f"{argument}{jax.tree_util.keystr(path)}"
        if isinstance(leaf, jax.core.Tracer):
            continue
        try:
            array = _as_jax_array(leaf)
        except (OverflowError, TypeError, ValueError) as err:
            raise ValueError(f"{name}: expected a numeric array, got {leaf!r} ({err})") from None
        if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == jnp.bool_):
            raise ValueError(f"{name}: expected a numeric array, got dtype {array.dtype}")
        values = np.asarray(array)
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            bad = np.argwhere(~np.isfinite(values))[0]
            raise ValueError(f"{name}: expected finite values, got {values[tuple(bad)]} at index {tuple(bad.tolist())}")


def check_params_fit_data(model: Model, params: PyTree, data: PyTree) -> None:
    """Raises ValueError where ``data`` are not of the shapes ``params`` were fitted to: where ``init(key, data)``
    gives a parameter leaf of another shape than ``params``' (a GMM fitted to 2 features, handed data of 1, whose
    means would otherwise broadcast against them). Abstract (nothing compiled); nothing is compared where ``init``
    does not run on ``data`` (fewer data than components) or gives another structure."""
    mismatch = _mismatched_leaf(_abstract_init(model, jax.random.key(0), data), params, dtypes=False)
    if mismatch is not None:
        path, expected, shape, _ = mismatch
        raise ValueError(f"data: expected data of the shapes the parameters were fitted to, got shapes "
                         f"{_shapes(data)}, for which init(key, data) gives params{path} of shape "
                         f"{tuple(expected.shape)}, where the parameters have {shape}")


def _check_like_init(model: Model, key: jax.Array, data: PyTree, params: PyTree) -> None:
    """Raises ValueError where a leaf of ``init_params`` differs from the one ``init(key, data)`` gives: in shape,
    or integer (or bool) where ``init`` gives floating point (an update would be truncated to integers)."""
    mismatch = _mismatched_leaf(_abstract_init(model, key, data), params)
    if mismatch is None:
        return
    path, expected, shape, dtype = mismatch
    if shape != tuple(expected.shape):
        raise ValueError(f"init_params{path}: expected shape {tuple(expected.shape)}, as init(key, data) gives for "
                         f"data of shapes {_shapes(data)}, got {shape}")
    raise ValueError(f"init_params{path}: expected a floating-point array ({expected.dtype}, as init(key, data) "
                     f"gives), got dtype {dtype}: every update of it would be rounded to {dtype}")


def _abstract_init(model: Model, key: jax.Array, data: PyTree) -> PyTree | None:
    """``init(key, data)``'s parameters, abstract, or None where it fails on these data."""
    try:
        return jax.eval_shape(model.init, key, data)
    except Exception:  # noqa: BLE001 - e.g. fewer data than components: nothing to compare with
        return None


def _mismatched_leaf(expected: PyTree | None, params: PyTree, dtypes: bool = True) -> tuple | None:
    """``(path, expected leaf, shape, dtype)`` of the first leaf of ``params`` whose shape differs from
    ``expected``'s, or (with ``dtypes``) which is integer or bool where ``expected``'s is floating; None where every
    leaf agrees, or where ``expected`` is None or of another structure."""
    if expected is None:
        return None
    given, structure = jax.tree_util.tree_flatten_with_path(params)
    wanted, wanted_structure = jax.tree_util.tree_flatten(expected)
    if structure != wanted_structure:
        return None
    for (path, leaf), spec in zip(given, wanted):
        shape, dtype = tuple(jnp.shape(leaf)), jnp.result_type(leaf)
        integral = jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_
        if shape != tuple(spec.shape) or (dtypes and integral and jnp.issubdtype(spec.dtype, jnp.inexact)):
            return jax.tree_util.keystr(path), spec, shape, dtype
    return None


def _continuous_value(latent) -> PyTree:
    """An abstract value of a pytree of ``Real`` / ``Gaussian`` specs."""
    real = jnp.result_type(float)  # float32, or float64 with jax_enable_x64
    return jax.tree_util.tree_map(lambda spec: value_shape(spec, real), latent, is_leaf=is_spec)


def _family(latent) -> str:
    """A local latent's kind: an exact family (``exact_family``), ``"continuous"`` (Real specs), ``"chains"`` (a
    pytree of several ``Markov`` specs: ``jaxvi.CAVI``'s structured mean field) or ``"factors"`` (exponential-family
    specs: ``jaxvi.CAVI``'s mean-field q per datum)."""
    leaves = jax.tree_util.tree_leaves(latent, is_leaf=is_spec)
    if leaves and all(isinstance(leaf, EXPONENTIAL_FAMILY_SPECS) for leaf in leaves):
        return "factors"
    if leaves and all(isinstance(leaf, (Real, Gaussian)) for leaf in leaves) and any(isinstance(leaf, Real) for leaf in leaves):
        return "continuous"
    if leaves and not isinstance(latent, Markov) and all(isinstance(leaf, Markov) for leaf in leaves):
        return "chains"
    return exact_family(latent)


def _check_scalar(fn, args, name: str, call: str) -> None:
    """Raises ValueError unless ``fn(*args)`` traces to a real scalar."""
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:
        raise ValueError(f"{name}: {call} failed: {err}") from err
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{name}: expected {call} to return a real scalar, got {getattr(out, 'shape', out)} "
                         f"of dtype {getattr(out, 'dtype', None)}")


def _shapes(tree: PyTree) -> str:
    return str(jax.tree_util.tree_map(lambda a: tuple(a.shape), tree))
