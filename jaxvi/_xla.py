"""A setting of XLA's CPU compiler jaxvi needs before JAX starts its CPU backend.

jaxlib up to 0.11.1 runs a batched LAPACK call (``solve``, ``cholesky``, ``slogdet``, ... on a stack of
matrices) by splitting the batch over the CPU backend's intra-op thread pool and blocking a pool thread until
the pieces are done. When the program runs as many such calls concurrently as the pool has threads (two on a
two-core machine: vmapped restarts of a fit with per-component matrices), every thread waits for work queued
behind it and the process hangs at 0% CPU. XLA's concurrency-optimised thunk scheduler puts such calls side by
side; the memory-optimised one orders them more, and on two cores costs nothing measurable (CAVI's Bayesian
mixture step was faster with it). This lowers the chance of the hang, it does not remove it: XLA still runs
independent thunks concurrently (a vmapped 8-restart CAVI fit of 200,000 points with 16 x 16 precisions still
hung with it). So ``CAVI`` runs its restarts one after another there (``batched_lapack_may_deadlock``;
``CAVI(restarts)``), and that fit runs through. jaxlib 0.11.2 compiles the parallel LAPACK path out: upgrade
where you can.
"""
from __future__ import annotations

import importlib.metadata
import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
FIXED_IN = (0, 11, 2)


def _version(text: str) -> tuple:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def avoid_lapack_deadlock() -> None:
    """Adds ``FLAG`` to ``XLA_FLAGS`` for jaxlib older than 0.11.2, unless the user set that option. It takes
    effect if JAX's CPU backend has not started yet (importing jaxvi before running any JAX computation)."""
    try:
        version = _version(importlib.metadata.version("jaxlib"))
    except importlib.metadata.PackageNotFoundError:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if version < FIXED_IN and "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()


def batched_lapack_may_deadlock() -> bool:
    """Whether this process runs batched LAPACK calls on jaxlib's CPU path that can deadlock (jaxlib older than
    0.11.2, the CPU backend): where CAVI runs its restarts one after another instead of vmapped."""
    import jax

    try:
        version = _version(importlib.metadata.version("jaxlib"))
    except importlib.metadata.PackageNotFoundError:
        return False
    return version < FIXED_IN and jax.default_backend() == "cpu"

