"""Saving and loading results: every array of a ``Result`` in one ``.npz`` file.

The file maps ``section/path`` (``params['means']``, ``trace``, ...) to arrays; PRNG keys are stored
as their key data. ``load(path, like=result)`` puts the arrays back into the structure of a result of
the same model and method (so NamedTuple parameters come back as themselves); without ``like`` it
returns the plain ``{section: {path: array}}`` dictionaries.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

__all__ = ["fill", "load", "load_tree", "save", "save_tree"]

SECTIONS = ("params", "guide_params", "objective", "trace", "n_iter", "converged", "diagnostics")
FORMAT = "jaxvi-result-1"


def save(result, path) -> None:
    """Writes ``result``'s arrays to ``path`` (an ``.npz`` file), atomically."""
    save_tree(path, {section: getattr(result, section) for section in SECTIONS},
              {"format": FORMAT, "method": repr(result.method)})


def load(path, like=None) -> Any:
    """Reads a result written by ``Result.save``.

    Args:
      path: the ``.npz`` file.
      like: a ``Result`` of the same model and method (e.g. a fresh fit, or one from
        ``jaxvi.infer`` with ``max_iter=1``); its structure receives the loaded arrays.

    Returns:
      A ``Result`` (with ``like``), else ``{section: {path: array}}``.

    Raises:
      ValueError: the file is not a jaxvi result, or does not match ``like``'s structure.
    """
    stored, meta = load_tree(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"path: expected a result written by Result.save ({FORMAT}), got {meta.get('format')!r}")
    if like is None:
        out = {section: {} for section in SECTIONS}
        for name, array in stored.items():
            section, key_path = name.split("/", 1)
            out[section][key_path] = array
        return out
    import dataclasses

    return dataclasses.replace(like, **{section: fill(getattr(like, section), stored, section) for section in SECTIONS})


def save_tree(path, sections: dict, meta: dict) -> None:
    """Writes every leaf of every ``{section: pytree}`` to an ``.npz`` at ``path``: first to a temporary
    file beside it, then renamed over it, so a reader never sees half a file."""
    arrays, kinds = {}, {}
    for section, tree in sections.items():
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = f"{section}/{jax.tree_util.keystr(key_path)}"
            is_key = jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)
            arrays[name] = np.asarray(jax.random.key_data(leaf) if is_key else leaf)
            kinds[name] = "key" if is_key else "array"
    path = os.fspath(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        np.savez(f, __meta__=np.array(json.dumps({**meta, "kinds": kinds})), **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def load_tree(path) -> tuple[dict, dict]:
    """``(arrays by name, metadata)`` of a file written by ``save_tree``."""
    with np.load(path, allow_pickle=False) as file:
        if "__meta__" not in file.files:
            raise ValueError(f"path: {path} is not a file written by jaxvi")
        meta = json.loads(str(file["__meta__"]))
        return {name: file[name] for name in file.files if name != "__meta__"}, meta


def fill(like, stored: dict, section: str):
    """``like``'s pytree with its leaves replaced by ``stored[section/path]`` (keys re-wrapped)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for key_path, leaf in flat:
        name = f"{section}/{jax.tree_util.keystr(key_path)}"
        if name not in stored:
            raise ValueError(f"like: the file has no {name}; was it written for this model and method?")
        array = stored[name]
        is_key = jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)
        expected = np.shape(jax.random.key_data(leaf)) if is_key else np.shape(leaf)
        if np.shape(array) != expected:
            raise ValueError(f"like: {name} has shape {np.shape(array)} in the file, {expected} here")
        leaves.append(jax.random.wrap_key_data(array) if is_key else jax.numpy.asarray(array, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)
