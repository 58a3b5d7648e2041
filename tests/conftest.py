"""Shared fixtures: small simulated data sets, made once per session."""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def blobs():
    """Four Gaussian clusters in 3-D, 500 points each, of different spreads (float64 NumPy)."""
    rng = np.random.default_rng(0)
    centers = [-3.0, 0.0, 3.0, 6.0]
    return np.concatenate([rng.normal(c, 1 + 0.3 * i, (500, 3)) for i, c in enumerate(centers)])
