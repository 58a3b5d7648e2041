"""Settings of XLA's CPU compiler jaxvi makes before JAX starts its CPU backend (``XLA_FLAGS``, read once a process):
importing jaxvi before running any JAX computation applies them; an option the user set in ``XLA_FLAGS`` is kept.

Small loops compiled whole (``compile_small_loops_whole``). XLA:CPU runs a ``while`` loop (a ``lax.scan``, a
``lax.while_loop``) as one call of the runtime per kernel of its body per turn, unless the loop accesses fewer bytes
than ``xla_cpu_small_while_loop_byte_threshold`` (1 kB by default, an option of ``xla_backend_extra_options``): such a
loop is compiled into one function, with no call per kernel. The forward-backward recursions of an HMM, CAVI's sweeps
and a vmapped restart's small steps are loops of a dozen or more small kernels per turn, where those calls cost more
than the arithmetic. jaxvi raises the threshold to ``SMALL_LOOP_BYTES``; measured on a 2-core Intel Xeon, jaxvi's
defaults otherwise (run, then compile): 10 EM iterations of a Gaussian HMM (K = 8) on 200 x 1,000 steps 0.73 ->
0.46 s and 2.1 -> 1.7 s; on 10 x 10^5 steps 4.95 -> 3.37 s; the same fit vmapped over four restarts of a 3-state
categorical HMM on 1,046 steps, run to convergence, 0.95 -> 0.29 s; the GMM, Bayesian mixture, SVI, VAE and LDA
benchmarks within this machine's noise, except a Gaussian mixture's EM on 10^4 points (65 -> 80 ms, its whole loop
now one function on one thread; 1.2 s with its compile either way). A threshold of 2^18 gave the HMM 0.68 s; of
10^8, the GMM's EM on 200,000 points ran 10x slower, single-threaded.

The LAPACK deadlock (``avoid_lapack_deadlock``). jaxlib up to 0.11.1 runs a batched LAPACK call (``solve``,
``cholesky``, ``slogdet``, ... on a stack of matrices) by splitting the batch over the CPU backend's intra-op thread
pool and blocking a pool thread until the pieces are done. When the program runs as many such calls concurrently as
the pool has threads (two on a two-core machine: vmapped restarts of a fit with per-component matrices), every
thread waits for work queued behind it and the process hangs at 0% CPU. XLA's concurrency-optimised thunk scheduler
puts such calls side by side; the memory-optimised one orders them more, and on two cores costs nothing measurable
(CAVI's Bayesian mixture step was faster with it). This lowers the chance of the hang, it does not remove it: XLA
still runs independent thunks concurrently (a vmapped 8-restart CAVI fit of 200,000 points with 16 x 16 precisions
still hung with it). So ``CAVI`` runs its restarts one after another there (``batched_lapack_may_deadlock``;
``CAVI(restarts)``), and that fit runs through. jaxlib 0.11.2 compiles the parallel LAPACK path out: upgrade where
you can.
"""
from __future__ import annotations

import importlib.metadata
import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
FIXED_IN = (0, 11, 2)
SMALL_LOOP_OPTION = "xla_cpu_small_while_loop_byte_threshold"
SMALL_LOOP_BYTES = 2 ** 20


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


def compile_small_loops_whole() -> None:
    """Adds ``xla_backend_extra_options`` with ``SMALL_LOOP_OPTION`` = ``SMALL_LOOP_BYTES`` to ``XLA_FLAGS``, unless
    the user passes backend options there already (theirs are kept whole). It takes effect if JAX's CPU backend has
    not started yet."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_extra_options" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_extra_options={SMALL_LOOP_OPTION}={SMALL_LOOP_BYTES}".strip()


def batched_lapack_may_deadlock() -> bool:
    """Whether this process runs batched LAPACK calls on jaxlib's CPU path that can deadlock (jaxlib older than
    0.11.2, the CPU backend): where CAVI runs its restarts one after another instead of vmapped."""
    import jax

    try:
        version = _version(importlib.metadata.version("jaxlib"))
    except importlib.metadata.PackageNotFoundError:
        return False
    return version < FIXED_IN and jax.default_backend() == "cpu"

