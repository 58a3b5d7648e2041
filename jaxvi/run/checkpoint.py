"""Checkpoints: a run's state written between compiled chunks, and resumed by a rerun of the same fit."""
from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np

from jaxvi.io import fill, load_tree

__all__ = ["FORMAT", "fingerprint", "resume"]

FORMAT = "jaxvi-checkpoint-2"


def fingerprint(method, data: Any, keys: jax.Array) -> dict:
    """What a checkpoint must match to be resumed: the method, the data (shapes, dtypes, a CRC of the
    bytes) and the keys."""
    leaves = jax.tree_util.tree_leaves(data)
    return {"format": FORMAT, "method": type(method).__name__,
            "data": [[list(a.shape), str(a.dtype), zlib.crc32(np.asarray(a).tobytes())] for a in leaves],
            "keys": np.asarray(jax.random.key_data(keys)).tolist()}


def resume(path, runs, expected: dict):
    """The runs stored at ``path``, in the structure of ``runs``.

    Raises:
      ValueError: the file is a checkpoint of another fit (method, data or key).
    """
    stored, meta = load_tree(path)
    for field, what in (("format", "file format"), ("method", "method"), ("data", "data"), ("keys", "key")):
        if meta.get(field) != expected[field]:
            raise ValueError(f"checkpoint: {path} holds a fit with another {what} than this call's; delete it "
                             f"or pass another path")
    return fill(runs, stored, "state")
