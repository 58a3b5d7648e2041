"""Shared fixtures: small simulated data sets, made once per session.

Most of the suite's time is XLA compiling small fits, not running them, so the tests ask XLA:CPU for
its cheapest code generation (``--xla_backend_optimization_level=0``): a third less compile time, 13%
less time on tests/vi, the same IEEE arithmetic; the long float32 runs gain nothing. It is set here,
before any test initialises a JAX backend, and reaches the subprocesses the tests start; a flag the
caller already gave in XLA_FLAGS wins.
"""
import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def blobs():
    """Four Gaussian clusters in 3-D, 500 points each, of different spreads (float64 NumPy)."""
    rng = np.random.default_rng(0)
    centers = [-3.0, 0.0, 3.0, 6.0]
    return np.concatenate([rng.normal(c, 1 + 0.3 * i, (500, 3)) for i, c in enumerate(centers)])
