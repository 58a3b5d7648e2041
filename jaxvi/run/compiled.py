"""Compiled code per model and method structure, kept for the most recently used fits only.

``jax.jit(fn, static_argnums=0)`` would keep every compilation for the life of the process: JAX's
caches hold each static argument, its traces and executables (thousands of entries), so a sweep that
builds a model or an optimiser that cannot equal the last (a new ``lambda`` capturing a new number, a
built ``optax.adam(rate)`` per rate) would add compiled code on every call until memory or the
kernel's limit on memory maps runs out.

Here a fit's functions are ``jax.jit(functools.partial(fn, model))``, one set per (model, method tree
structure), held in a least-recently-used table of ``CACHED_FITS`` fits. JAX frees a jitted function's
executables with the function, so when the table drops the oldest fit its compiled code is freed (JAX's
own tracing caches keep small records of it until they, bounded too, drop them). Equal settings (``jaxvi.equality``: a fresh ``Model`` of the same functions, a
fresh ``optax.adam(1e-2)``) find the same entry and compile nothing; numbers are traced leaves of the
method, not part of its structure, so a new learning rate or tolerance finds it too.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import os
import threading
from typing import Any, Callable

import jax

from jaxvi.model import is_traced
from jaxvi.run import stored

__all__ = ["CACHE_ENV", "CACHED_FITS", "CHEAP_CODE", "CHEAP_PASS_BYTES", "CHEAP_RUN_BYTES", "CPU_CODE",
           "LARGE_KERNEL_CODE", "OneProgram", "START_PASSES", "cache", "cached_fits", "compiled_outside_traces",
           "compiler_options", "nbytes", "per_fit", "run_once_options", "runs_once_cheaply"]

OPTIMIZATION_LEVEL = "xla_backend_optimization_level"
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA's CPU compiler (jaxlib 0.10) hands parts of a program to YNNPACK: matrix products and convolutions, and reductions
# together with the arithmetic that feeds them. In jaxvi's programs those fused reductions ran several times slower than
# XLA's own loops (2-core CPU, YNNPACK's products kept either way: a Bayesian mixture's local step on 200,000 x 16 data,
# K = 16, 119 ms -> 27 ms; 10 EM iterations of a Gaussian HMM on 200 x 1,000 steps 1.03 s -> 0.43 s; 20 of a GMM on
# 200,000 x 16 data 1.59 s -> 1.15 s; SVI's logistic regression and the VAE unchanged). So jaxvi's programs leave
# YNNPACK the products alone: the option's value lists the kinds of work it may take. Not in code XLA does not optimise
# (backend optimisation level 0: CHEAP_CODE, or XLA_FLAGS), whose own loops are slower still: a Bernoulli mixture's EM
# on the digits, float64, 1.08 s with YNNPACK's reductions, 4.5 s without.
# The backend optimisation level (LLVM's code generation: 3, "aggressive", by default) is 1, as most of a large
# program's compile time is LLVM's (a Bayesian mixture's CAVI fit: 0.70 s of XLA's passes, then 3.78 s of LLVM). Level 1
# compiled that fit (start, 20 iterations, final bound) in 3.95 s against 4.70 s (medians of four, alternated) and the
# VAE's in 2.7-3.1 s against 2.9-3.3 s; the runs of those, an HMM's and a GMM's EM, SVI and LDA stayed within this
# 2-core CPU's noise (LDA on 10,000 documents 5.2-5.3 s against 5.7-5.8 s; on the small Lee corpus 0.56-0.58 s against
# 0.49-0.52 s).
CPU_CODE = {YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
            OPTIMIZATION_LEVEL: 1}
# XLA:CPU compiles each fused kernel through its fusion emitters (MLIR, then LLVM) by default; its older elemental
# emitters compile a kernel in less time, and their code runs as fast over large arrays, slower in small kernels run
# many times and in some transcendental functions (log1p). Measured at level 1 on the 2-core CPU, fusion emitters
# against the older ones, compile time then run time: a Bayesian mixture's CAVI fit (200,000 x 16, K = 16, 20
# iterations) 4.2-4.6 s -> 3.0-3.2 s, 1.23-1.43 s -> 1.31-1.57 s; a 16-component GMM's EM, 8 restarts, 1.6-1.8 s ->
# 1.05-1.1 s, 8.27 s either way. Against that, run time: a Gaussian HMM's EM (200 x 1,000 steps, a scan of small
# kernels) 0.40 s -> 0.65 s, its variational HMM by CAVI 2.2 s -> 2.4-2.6 s (compile 6.2 s -> 4.3 s), SVI's
# logistic regression (2,000 steps, log1p) 0.39 s -> 0.61 s, the VAE 2.4 s -> 2.7 s, LDA by CAVI on 100,000 documents
# (K = 50, V = 10,000, 2 batch iterations) 54-64 s -> 58-75 s (compile 3.3-4.0 s -> 2.5-3.0 s). So the older emitters
# compile the programs of fits that work in large kernels over the data, where compiling dominates
# (``method.large_kernels(model)``: EM and CAVI with discrete local latents or none); the others keep the default.
# jaxlib 0.11 dropped the older emitters and this option with them: there those fits keep the fusion emitters and the
# rest of CPU_CODE (XLA is asked for each option on its own).
LARGE_KERNEL_CODE = {"xla_cpu_use_fusion_emitters": False}

# XLA's cheapest code generation, for code where compiling dominates running: no backend optimisation. IEEE arithmetic,
# fused in another order: results agree with XLA's defaults to rounding, not bit for bit (CAVI's conjugacy probe,
# D = K = 16: 4.0-5.4 s at XLA's defaults, 2.6-3.8 s at level 0). Not with the older emitters (LARGE_KERNEL_CODE) as
# well, though they compiled that probe in 1.5-2.0 s: at level 0 XLA:CPU compiled some programs with them into code
# that never finished. EM with a gradient M-step (L-BFGS, whose line search is a loop in the run's loop), 8 restarts
# vmapped, on 100 points of a mixture of two regressions spun for two of sixty data sets drawn (seeds 2 and 5), and
# finished with either option alone (tests/test_em.py); at level 0 alone its run compiled in 1.05-1.30 s against
# 0.72-0.78 s with both.
# From jaxlib 0.12 on (0.12.1 here; 0.11.2 was fine), XLA:CPU compiled that program at level 0 alone into code that
# never finished too, and at level 1 it ran in 4.6 s: there the cheapest code is level 1 (``_cheapest_level``).
# A fit that works in large kernels over the data (``LARGE_KERNEL_CODE``) is not compiled for CHEAP_CODE where XLA
# takes the older emitters: its optimised code, with them, compiles as fast as level 0 does with the fusion emitters
# or faster, and runs faster. A Bayesian mixture's CAVI run program alone (2,000 x 16, K = 16, 20 iterations; timed
# in one process each, twice) compiled in 2.7-2.9 s against 3.1-4.7 s and ran in 0.09 s against 0.27-0.37 s; first
# calls in fresh processes (benchmarks/results/cold_fits_cpu.md, median of three, alternated): that fit 7.58 ->
# 7.13 s, a Bayesian mixture on wine (178 x 2, K = 6) 6.11 -> 5.13 s, EM's mixture on wine (K = 3, 4 restarts)
# 2.90 -> 2.81 s.


def _cheapest_level() -> int:
    """The lowest backend optimisation level at which this jaxlib's XLA compiles jaxvi's programs into code that
    finishes: 0, and 1 from jaxlib 0.12 on."""
    import jaxlib

    major, minor = (int(part) for part in jaxlib.__version__.split(".")[:2])
    return 0 if (major, minor) < (0, 12) else 1


CHEAP_CODE = {OPTIMIZATION_LEVEL: _cheapest_level()}
# Where compiling dominates running, code is compiled for CHEAP_CODE: code that makes one pass over its arrays (a final
# evaluation, a posterior) where they are at most CHEAP_PASS_BYTES (SVI's final ELBO of a logistic regression on
# 20,000 x 50 floats: compile 1.30 s -> 0.27 s, run 0.01 s -> 0.05 s; EM's of a 16-component full-covariance GMM on
# 200,000 x 16: compile 0.35 s -> 0.11 s, run < 0.01 s); a fit's run where the data and states times its steps are at
# most CHEAP_RUN_BYTES, and its start where the data times START_PASSES are (a start may loop over the data itself:
# k-means). A Gaussian HMM's run on 5 x 40 x 2 floats, 8 steps: compile 1.99 s -> 0.46 s, run 0.004 s either way; on
# 200 x 1,000 x 2 floats, 100 steps (160 MB touched), the cheap code would run 10x slower (2.3 s -> 23.6 s). A
# 16-component GMM's start (k-means) on 200,000 x 16 floats: compile 1.79 s -> 0.53 s, run 0.73 s -> 8.2 s. (Those
# figures are XLA's defaults against CHEAP_CODE with the older emitters, before it dropped them; small fits today:
# benchmarks/results/small_fits_cpu.md.)
CHEAP_PASS_BYTES = 2 ** 24
CHEAP_RUN_BYTES = 2 ** 22
START_PASSES = 100
CACHED_FITS = 16  # (model, method structure) pairs whose compiled code is kept
CACHE_ENV = "JAXVI_CACHE"  # a folder: ``import jaxvi`` turns the on-disk cache on there (``cache``)

_fits: collections.OrderedDict = collections.OrderedDict()  # (model, structure) -> {(fn, options): jitted fn}
_lock = threading.Lock()


def compiler_options(options: dict | None = None, *, model: Any = None, method: Any = None) -> dict:
    """XLA's options for jaxvi's compiled programs: ``options`` (e.g. ``CHEAP_CODE``), with ``CPU_CODE`` where JAX
    compiles for a CPU whose XLA takes it and the code is optimised (not ``CHEAP_CODE``'s level 0, nor level 0 in
    ``XLA_FLAGS``), less the options ``XLA_FLAGS`` sets and those of ``options``; and ``LARGE_KERNEL_CODE`` there too
    for a fit of ``model`` by ``method`` whose step works in large kernels over the data
    (``method.large_kernels(model)``), which takes that optimised code where jaxvi asks for ``CHEAP_CODE`` itself, as
    it compiles as fast or faster (see ``CHEAP_CODE``).

    jaxvi compiles its own programs (``jaxvi.infer``'s start, run and final evaluation, posteriors, streamed steps)
    with them. A program of your own that runs a method's ``step`` (your ``lax.scan``) runs as jaxvi's do when you
    pass them too: ``jax.jit(fit, compiler_options=jaxvi.compiler_options(model=model, method=method))``.
    """
    cheapest = options is CHEAP_CODE  # jaxvi's own request (a level 0 asked for by hand is kept as it is)
    options = dict(options or {})
    large = model is not None and hasattr(method, "large_kernels") and bool(method.large_kernels(model))
    if cheapest and large and LARGE_KERNEL_CODE.items() <= _cpu_code(True).items():
        options = {}  # the older emitters' optimised code compiles as fast as CHEAP_CODE's or faster (see there)
    if options == CHEAP_CODE or options.get(OPTIMIZATION_LEVEL) == 0:
        return options
    return {**_cpu_code(large), **options}


@functools.cache
def _cpu_code(large_kernels: bool = False) -> dict:
    """``CPU_CODE`` (with ``LARGE_KERNEL_CODE`` for ``large_kernels``) less the options ``XLA_FLAGS`` sets and those
    this XLA refuses, each asked on its own (one without YNNPACK refuses its option; from jaxlib 0.11 on, XLA:CPU has
    no older emitters and refuses ``LARGE_KERNEL_CODE``, and the others still hold); nothing on another backend or
    where ``XLA_FLAGS`` turns optimisation off."""
    flags = os.environ.get("XLA_FLAGS", "")
    wanted = {**CPU_CODE, **LARGE_KERNEL_CODE} if large_kernels else CPU_CODE
    if jax.default_backend() != "cpu" or f"{OPTIMIZATION_LEVEL}=0" in flags:
        return {}
    return {name: value for name, value in wanted.items() if name not in flags and _accepted(name, value)}


def _accepted(name: str, value: Any) -> bool:
    """Whether XLA takes the option ``name=value`` (``_accepts``), asked once per cache folder: a process that finds
    the answer there reads it (``stored.remembered``); a refusal is asked again."""
    return stored.remembered(f"XLA accepts the compiler option {name}={value!r}",
                             functools.partial(_accepts, {name: value}), keep=bool)


def _accepts(options: dict) -> bool:
    """Whether XLA compiles a program with ``options``. It checks their names and values before compiling anything:
    an identity, lowered for an abstract scalar (no array to make), has no kernel to compile (7 ms against 15 for
    x + 1; a process that finds the answer in the cache folder reads it: ``stored.remembered``)."""
    try:
        jax.jit(lambda x: x, compiler_options=options).lower(jax.ShapeDtypeStruct((), jax.numpy.float32)).compile()
    except Exception:  # noqa: BLE001 - XLA's error type differs between jaxlib versions
        return False
    return True


@dataclasses.dataclass(frozen=True)
class OneProgram:
    """``fn``, run as one compiled program where it is called on concrete values, and as itself inside a trace
    (where it is part of the caller's program: ``infer``'s start, a user's ``jit``).

    Outside ``jit``, JAX runs a function operation by operation and compiles each operation for its shapes, some
    30 ms apiece: a mixture's k-means start called so took 5 s, and 1 s as one program. Numpy arrays are taken as
    ``jit`` takes them. A frozen dataclass: a model holding one keeps its structural equality (``jaxvi.equality``).
    """

    fn: Callable

    def __call__(self, *args, **kwargs):
        if is_traced(args, kwargs):
            return self.fn(*args, **kwargs)
        return jax.jit(self.fn, compiler_options=compiler_options())(*args, **kwargs)  # JAX's caches keep fn's code


def per_fit(fn: Callable, options: dict | None = None) -> Callable:
    """``fn(model, method, *args, **kwargs)`` compiled once per model and method structure (``model``: a model, or
    static settings compared by what they are, as ``jaxvi.exact.posterior`` passes its log-joint and latent in a
    ``jaxvi.equality.Structural``).

    The call is ``jax.jit(functools.partial(fn, model))(method, *args, **kwargs)``, the jitted function
    taken from the table of recent fits; ``.lower(model, method, ...)`` lowers it ahead of time.
    XLA compiles it with ``compiler_options(options, model=model, method=method)``, for this function only
    (``options``: ``CHEAP_CODE`` for a check run once on a few rows); called inside a trace (a user's ``jit``,
    ``vmap`` or ``eval_shape``), the function is part of the caller's program, which XLA compiles with the caller's
    options (JAX refuses options on a nested ``jit``).
    """
    def chosen_options(model, method, args, kwargs) -> dict | None:
        return None if is_traced(method, args, kwargs) else compiler_options(options, model=model, method=method)

    @functools.wraps(fn)
    def call(model, method, *args, **kwargs):
        chosen = chosen_options(model, method, args, kwargs)
        jitted, memo = _jitted(fn, model, method, chosen)
        return stored.call(jitted, memo, fn, model, method, args, kwargs, chosen)

    call.lower = lambda model, method, *args, **kwargs: _jitted(
        fn, model, method, chosen_options(model, method, args, kwargs))[0].lower(method, *args, **kwargs)
    return call


def compiled_outside_traces(function: Callable) -> Callable:
    """Decorates a method's ``init`` or ``finalize``, ``function(method, model, *args, **kwargs)``: called on
    concrete values (a loop of a user's own starts or ends outside ``jit``, as docs/methods.md shows), it runs as
    one program compiled once per model and method structure (``per_fit``); inside a trace (``infer``'s programs, a
    user's ``jit``), ``function`` itself runs, as part of the caller's program.

    Run operation by operation, JAX compiles each operation alone: a Bayesian mixture's ``CAVI.init`` compiled 545
    of them, 20 s, against 3 s as one program; ``SVI.finalize`` 3.4 s.
    """
    compiled = _PROTOCOL_FUNCTIONS[function.__name__]

    @functools.wraps(function)
    def call(method, model, *args, **kwargs):
        if is_traced(args, kwargs):  # not through per_fit: a traced call would take a place in its table of fits
            return function(method, model, *args, **kwargs)
        return compiled(model, method, *args, **kwargs)

    return call


def _method_init(model, method, *args, **kwargs):
    return method.init(model, *args, **kwargs)


def _method_finalize(model, method, *args, **kwargs):
    return method.finalize(model, *args, **kwargs)


_PROTOCOL_FUNCTIONS = {"init": per_fit(_method_init), "finalize": per_fit(_method_finalize)}


def nbytes(tree: Any) -> int:
    """The bytes of the arrays among ``tree``'s leaves (other leaves count nothing)."""
    return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree)
               if hasattr(a, "dtype") and hasattr(a, "size"))


def runs_once_cheaply(*trees: Any, passes: int = 1) -> bool:
    """Whether code run once (a posterior, an evaluation) that makes ``passes`` passes over the arrays of ``trees`` is
    compiled for ``CHEAP_CODE``: where their bytes times the passes are at most ``CHEAP_PASS_BYTES``."""
    return nbytes(trees) * passes <= CHEAP_PASS_BYTES


def run_once_options(*trees: Any, passes: int = 1) -> dict | None:
    """XLA's options for code run once that makes ``passes`` passes over the arrays of ``trees``:
    ``compiler_options(CHEAP_CODE)`` where it ``runs_once_cheaply``, ``compiler_options()`` above; None inside a trace
    (whose caller's options hold)."""
    if is_traced(*trees):
        return None
    return compiler_options(CHEAP_CODE if runs_once_cheaply(*trees, passes=passes) else None)


def cached_fits() -> int:
    """How many (model, method structure) pairs hold compiled code now (at most ``CACHED_FITS``)."""
    return len(_fits)


def _jitted(fn: Callable, model: Any, method: Any, options: dict | None = None) -> tuple[Callable, dict]:
    """The jitted ``fn`` of this fit, made if new, and its executables loaded or stored on disk by this process
    (``jaxvi.run.stored``); the fit becomes the most recent, the oldest beyond ``CACHED_FITS`` are dropped."""
    key = (model, jax.tree_util.tree_structure(method))
    with _lock:
        functions = _fits.pop(key, None) or {}
        _fits[key] = functions
        while len(_fits) > max(CACHED_FITS, 1):
            _fits.popitem(last=False)
        name = (fn, tuple(sorted((options or {}).items())))
        if name not in functions:
            functions[name] = (jax.jit(functools.partial(fn, model), compiler_options=options), {})
        return functions[name]


def cache(path: str | os.PathLike | None = None) -> str:
    """Keeps compiled code on disk in ``path`` (JAX's persistent compilation cache), for later processes.

    A process that compiles a program already there (the same model code, method structure, data shapes and
    dtypes, jax version and device) loads it instead of compiling it: a script run again pays its
    compile time once. Every compilation is kept, however short (JAX keeps only those over a second by
    default). A fit's own executables (its start, loop and final evaluation) are also kept whole in
    ``path/fits``, under a digest of the model's and method's code and the data's shapes
    (``jaxvi.run.stored``), so a later process finds them without tracing or lowering anything (nor checking the
    model again on data of the shapes it passed on). The folder
    grows with every new program; delete it to start afresh, and after changing code a digest cannot see
    (code built from strings at run time, a C extension outside installed packages). Setting the environment
    variable ``JAXVI_CACHE`` to a folder does the same when jaxvi is imported.

    Args:
      path: a folder, made if missing; default ``$XDG_CACHE_HOME/jaxvi`` (``~/.cache/jaxvi``).

    Returns:
      The folder's absolute path.

    Raises:
      ValueError: ``path`` is not a folder this process can write.
    """
    from jax.experimental.compilation_cache import compilation_cache

    if path is None:
        path = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "jaxvi")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a folder path (str or os.PathLike) or None, got {path!r}")
    folder = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ValueError(f"path: expected a folder that can be made and written, got {folder!r} ({err})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"path: expected a folder this process can write, got {folder!r}")
    compilation_cache.reset_cache()  # a cache already opened elsewhere is closed; the next compile opens this one
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    stored.set_folder(folder)
    return folder
