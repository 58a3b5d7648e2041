"""Saving and loading: pytrees of arrays in one ``.npz`` file, read back member by member.

A file maps ``section/path`` (``params['means']``, ``trace``, ``state.n_iter``, ...) to arrays and holds
a JSON ``__meta__`` member: its format, and the kind of every member, ``"array"`` or ``"key/<impl>"``
(a PRNG key stored as its key data with the name of its implementation: ``threefry2x32``, ``rbg``,
``unsafe_rbg``, ...). ``Result.save`` writes a result's arrays; ``load(path, like=result)`` puts them back
into the structure of a result of the same model and method (so NamedTuple parameters come back as
themselves); without ``like`` it returns the plain ``{section: {path: array}}`` dictionaries.

Writes are atomic: a temporary file beside the target, renamed over it, and removed on any failure.
Reads treat the file as untrusted: whatever is wrong with it (not a zip, truncated, a flipped bit that
fails a CRC, a malformed header, a pickled object, another structure, shape, dtype or key
implementation) is a ``ValueError`` naming the file; with ``like``, only the members it needs are read,
each checked from its header before its data are inflated.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Archive", "check_path", "fill", "key_impl", "load", "save", "save_tree"]

SECTIONS = ("params", "guide_params", "objective", "trace", "n_iter", "converged", "diagnostics", "method")
# 2: keys stored with their implementation; 3: Normal-Wishart factors held about their means; 4: the method's numbers
FORMAT = "jaxvi-result-4"
READABLE = ("jaxvi-result-1", "jaxvi-result-2", "jaxvi-result-3", FORMAT)
_NATURAL_NORMAL_WISHART = ("jaxvi-result-1", "jaxvi-result-2")  # formats whose Normal-Wishart factors are natural
_META_LIMIT = 1 << 24  # bytes of the JSON metadata


def save(result, path) -> None:
    """Writes ``result``'s arrays to ``path`` (an ``.npz`` file), atomically.

    Raises:
      ValueError: ``path`` is a directory, or no file can be written there.
    """
    path = check_path(path, "path")
    sections = {section: getattr(result, section) for section in SECTIONS}
    # the method's numbers as a fit holds them (a number given as a Python float is a float32 array there)
    sections["method"] = jax.tree_util.tree_map(jnp.asarray, result.method)
    save_tree(path, sections,
              {"format": FORMAT, "method": repr(result.method)})


def load(path, like=None) -> Any:
    """Reads a result written by ``Result.save``.

    Args:
      path: the ``.npz`` file.
      like: a ``Result`` of the same model, method and data shapes, with the same ``max_iter`` and ``n_init``
        (its trace holds ``max_iter + 1`` objectives, and there is one per restart); its structure receives the
        loaded arrays, and only the members it needs are read. It may be abstract
        (``jax.eval_shape(lambda: jaxvi.infer(...))``: nothing is fitted): the method's numbers (``tol``, a step
        size) are read from the file too.

    Returns:
      A ``Result`` (with ``like``), else ``{section: {path: array}}``.

    Raises:
      ValueError: the file is not a jaxvi result (or is damaged), or does not match ``like``'s
        structure, shapes, dtypes or key implementations; a file written before the method's numbers were kept
        (jaxvi-result-3 and older) with a ``like`` whose method's numbers are abstract.
    """
    with Archive(path, "path") as archive:
        if archive.meta.get("format") not in READABLE:
            raise archive.error(f"expected a result written by Result.save ({FORMAT}), got format "
                                f"{archive.meta.get('format')!r}")
        if like is None:
            out = {section: {} for section in SECTIONS}
            for name in archive.names:
                section, key_path = name.split("/", 1) if "/" in name else (name, "")
                if section not in out:
                    raise archive.error(f"member {name} is in no section of a result {SECTIONS}")
                out[section][key_path] = archive.read(name)
            return out
        written = archive.meta["format"]
        if written in _NATURAL_NORMAL_WISHART and _normal_wishart_factors(getattr(like, "model", None)):
            raise archive.error(f"it was written as {written}, whose Normal-Wishart and Normal-Gamma factors hold "
                                f"natural parameters; {FORMAT} holds them about their means (float32 keeps their "
                                f"scale so): fit the model again")
        sections = SECTIONS
        if written != FORMAT:  # the method's numbers are not in the file: like's own are kept, if it has values
            sections = tuple(section for section in SECTIONS if section != "method")
            if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree_util.tree_leaves(like.method)):
                raise archive.error(f"it was written as {written}, which does not keep the method's numbers, and "
                                    f"like's method has none ({like.method!r}): pass a like whose method holds them "
                                    f"(a Result, not jax.eval_shape's)")
        return dataclasses.replace(like, **{section: fill(getattr(like, section), archive, section)
                                            for section in sections})


def _normal_wishart_factors(model) -> bool:
    """Whether ``model`` has a Normal-Wishart or Normal-Gamma latent (a ``jaxvi.CAVI`` q's factor), in a ``Global``
    node or not."""
    from jaxvi.latents import NormalGamma, NormalWishart, is_spec, split_latent
    parts = split_latent(getattr(model, "latent", None))
    leaves = jax.tree_util.tree_leaves([parts.local] + [node.latent for node in parts.globals], is_leaf=is_spec)
    return any(isinstance(leaf, (NormalWishart, NormalGamma)) for leaf in leaves)


def check_path(path, argument: str) -> str:
    """``path`` as a string, once a file is known to be writable there (a temporary file is created
    beside it and removed): bad paths fail here, before anything is computed.

    Raises:
      ValueError: not a path, a directory, or no file can be created in its folder.
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise ValueError(f"{argument}: expected a file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{argument}: expected a file path, got the directory {path}")
    temporary = _temporary(path)
    try:
        with open(temporary, "wb"):
            pass
    except OSError as err:
        raise ValueError(f"{argument}: cannot write a file at {path}: {err.strerror or err}") from None
    os.remove(temporary)
    return path


def save_tree(path: str, sections: dict, meta: dict) -> None:
    """Writes every leaf of every ``{section: pytree}`` to an ``.npz`` at ``path``: first to a temporary
    file beside it, then renamed over it, so a reader never sees half a file; on any failure the
    temporary file is removed and the error raised."""
    arrays, kinds = {}, {}
    for section, tree in sections.items():
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = f"{section}/{jax.tree_util.keystr(key_path)}"
            if _is_key(leaf):
                arrays[name], kinds[name] = np.asarray(jax.random.key_data(leaf)), f"key/{key_impl(leaf)}"
            else:
                arrays[name], kinds[name] = np.asarray(leaf), "array"
    temporary = _temporary(path)
    try:
        with open(temporary, "wb") as f:
            np.savez(f, __meta__=np.array(json.dumps({**meta, "kinds": kinds})), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class Archive:
    """A file written by ``save_tree``, open for reading one member at a time (a context manager).

    Attributes:
      path: the file.
      meta: its metadata (a dict; ``meta["kinds"]`` maps member names to their kind).
      names: its members' names, ``__meta__`` excluded.
    """

    def __init__(self, path, argument: str):
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"{argument}: expected a file path (str or os.PathLike), got {type(path).__name__}")
        self.path, self.argument = os.fspath(path), argument
        try:
            self._zip = zipfile.ZipFile(self.path)
        except OSError as err:
            raise self.error(f"cannot be read: {err.strerror or err}") from None
        except Exception as err:  # any damage to an untrusted file: BadZipFile, EOFError, ...
            raise self.error(f"is not a file written by jaxvi (not a readable .npz: {err})") from None
        self._members = {info.filename[:-4]: info for info in self._zip.infolist() if info.filename.endswith(".npy")}
        if "__meta__" not in self._members:
            self.close()
            raise self.error("is not a file written by jaxvi (no __meta__ member)")
        try:
            self.meta = _parse_meta(self.read("__meta__", limit=_META_LIMIT))
        except ValueError as err:
            self.close()
            raise err if str(err).startswith(f"{argument}: ") else self.error(f"has malformed metadata: {err}") from None
        self.names = [name for name in self._members if name != "__meta__"]

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def error(self, what: str) -> ValueError:
        return ValueError(f"{self.argument}: {self.path} {what}")

    def read(self, name: str, shape: tuple | None = None, dtype=None, limit: int | None = None) -> np.ndarray:
        """Member ``name`` as an array: its header is read and checked against ``shape`` and ``dtype``
        (and ``limit`` bytes) before its data are inflated; a pickled (object) array is refused."""
        info = self._members.get(name)
        if info is None:
            raise self.error(f"has no member {name}")
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"unsupported .npy version {version}")
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                stored_shape, fortran, stored_dtype = header(f)
                if stored_dtype.hasobject:
                    raise ValueError("it holds Python objects (a pickle), which jaxvi never writes")
                if shape is not None and (tuple(stored_shape) != tuple(shape) or stored_dtype != np.dtype(dtype)):
                    raise ValueError(f"shape {tuple(stored_shape)} and dtype {stored_dtype} in the file, expected "
                                     f"{tuple(shape)} and {np.dtype(dtype)}")
                size = math.prod(stored_shape)
                nbytes = size * stored_dtype.itemsize
                if limit is not None and nbytes > limit:
                    raise ValueError(f"{nbytes} bytes, more than the {limit} allowed")
                if info.file_size != f.tell() + nbytes:
                    raise ValueError(f"its header says {nbytes} bytes of data, the file holds "
                                     f"{info.file_size - f.tell()}")
                flat = np.empty(size, stored_dtype)
                if (nbytes and f.readinto(flat.view(np.uint8)) != nbytes) or f.read(1):
                    raise ValueError("its data are truncated")
                return flat.reshape(stored_shape, order="F" if fortran else "C")
        except Exception as err:  # any damage to an untrusted file: a bad CRC, a malformed header, ...
            raise self.error(f"member {name}: {err}") from None


def fill(like, archive: Archive, section: str):
    """``like``'s pytree with its leaves replaced by the members ``section/path`` of ``archive``.

    ``like``'s leaves may be arrays or ``jax.ShapeDtypeStruct``s. Only these members are read; the
    section must hold exactly them, each of its leaf's shape and dtype (keys: of its implementation).

    Raises:
      ValueError: a member missing or extra, of another shape, dtype or kind (naming the member).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [f"{section}/{jax.tree_util.keystr(key_path)}" for key_path, _ in flat]
    stored = [name for name in archive.names if name == section or name.startswith(f"{section}/")]
    missing, extra = sorted(set(names) - set(stored)), sorted(set(stored) - set(names))
    if missing or extra:
        raise archive.error(f"holds another structure of {section}: missing {missing[:3]}, extra {extra[:3]} "
                            f"(was it written for this model and method?)")
    leaves = []
    for name, (_, leaf) in zip(names, flat):
        kind = archive.meta["kinds"].get(name)
        if _is_key(leaf):
            impl, data = key_impl(leaf), jax.eval_shape(jax.random.key_data, leaf)
            if kind not in (f"key/{impl}", "key"):  # "key": jaxvi-result-1, which named no implementation
                raise archive.error(f"member {name}: expected a {impl} PRNG key, the file holds {kind!r}")
            leaves.append(jax.random.wrap_key_data(archive.read(name, data.shape, data.dtype), impl=impl))
        else:
            if kind != "array":
                raise archive.error(f"member {name}: expected an array, the file holds {kind!r}")
            dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
            leaves.append(jax.device_put(archive.read(name, np.shape(leaf), dtype)))  # no staging program
    return jax.tree_util.tree_unflatten(treedef, leaves)


def key_impl(leaf) -> str:
    """The name of a PRNG key's implementation (``threefry2x32``, ``rbg``, ...), also of an abstract
    key (a ``jax.ShapeDtypeStruct``)."""
    names = []
    jax.eval_shape(lambda key: names.append(str(jax.random.key_impl(key))), leaf)
    return names[0]


def _parse_meta(array: np.ndarray) -> dict:
    """The metadata member: a JSON object, with a ``kinds`` object of strings."""
    if array.shape != () or array.dtype.kind != "U":
        raise ValueError(f"expected one JSON string, got an array of shape {array.shape} and dtype {array.dtype}")
    meta = json.loads(str(array))  # a JSONDecodeError is a ValueError
    kinds = meta.get("kinds") if isinstance(meta, dict) else None
    if not isinstance(kinds, dict) or not all(isinstance(kind, str) for kind in kinds.values()):
        raise ValueError("expected a JSON object whose 'kinds' maps member names to strings")
    return meta


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)


def _temporary(path: str) -> str:
    return f"{path}.{os.getpid()}.tmp"
