"""Saving and loading results: every array of a ``Result`` in one ``.npz`` file.

The file maps ``section/path`` (``params['means']``, ``trace``, ...) to arrays; PRNG keys are stored
as their key data. ``load(path, like=result)`` puts the arrays back into the structure of a result of
the same model and method (so NamedTuple parameters come back as themselves); without ``like`` it
returns the plain ``{section: {path: array}}`` dictionaries.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

__all__ = ["load", "save"]

SECTIONS = ("params", "guide_params", "objective", "trace", "n_iter", "converged", "diagnostics")
FORMAT = "jaxvi-result-1"


def save(result, path) -> None:
    """Writes ``result``'s arrays to ``path`` (an ``.npz`` file)."""
    arrays, kinds = {}, {}
    for section in SECTIONS:
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(getattr(result, section))[0]:
            name = f"{section}/{jax.tree_util.keystr(key_path)}"
            is_key = jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)
            arrays[name] = np.asarray(jax.random.key_data(leaf) if is_key else leaf)
            kinds[name] = "key" if is_key else "array"
    meta = {"format": FORMAT, "method": repr(result.method), "kinds": kinds}
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)


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
    with np.load(path, allow_pickle=False) as file:
        if "__meta__" not in file.files:
            raise ValueError(f"path: {path} is not a file written by Result.save")
        meta = json.loads(str(file["__meta__"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"path: expected format {FORMAT}, got {meta.get('format')!r}")
        stored = {name: file[name] for name in file.files if name != "__meta__"}
    if like is None:
        out = {section: {} for section in SECTIONS}
        for name, array in stored.items():
            section, key_path = name.split("/", 1)
            out[section][key_path] = array
        return out
    import dataclasses

    sections = {}
    for section in SECTIONS:
        flat, treedef = jax.tree_util.tree_flatten_with_path(getattr(like, section))
        leaves = []
        for key_path, leaf in flat:
            name = f"{section}/{jax.tree_util.keystr(key_path)}"
            if name not in stored:
                raise ValueError(f"like: the file has no {name}; was it saved from a result of this model and method?")
            array = stored[name]
            if np.shape(array) != np.shape(jax.random.key_data(leaf) if meta["kinds"].get(name) == "key" else leaf):
                raise ValueError(f"like: {name} has shape {np.shape(array)} in the file, {np.shape(leaf)} in like")
            leaves.append(jax.random.wrap_key_data(array) if meta["kinds"].get(name) == "key" else jax.numpy.asarray(array))
        sections[section] = jax.tree_util.tree_unflatten(treedef, leaves)
    return dataclasses.replace(like, **sections)
