"""Checkpoints: a fit killed mid-way and rerun with the same arguments resumes and ends where an
uninterrupted fit ends, bit for bit."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import jaxvi
from jaxvi.io import load_tree

STEPS = 60_000

MODEL = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxvi

    x = np.random.default_rng(0).normal(1.0, 2.0, size=(300, 2)).astype(np.float32)
    latent = jaxvi.Global({"mu": jaxvi.Real((2,)), "sd": jaxvi.Real((), bijector=jaxvi.positive())},
                          lambda p, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["mu"], 0, 10)) - z["sd"])
    model = jaxvi.Model(lambda p, z, x: jnp.sum(jax.scipy.stats.norm.logpdf(x, z["mu"], z["sd"])), latent,
                        lambda k, d: {})
    method = jaxvi.SVI(num_steps=STEPS, batch_size=30, optimizer=optax.adam(1e-3))
''').replace("STEPS", str(STEPS))


def fit(path=None):
    namespace = {}
    exec(MODEL, namespace)
    return jaxvi.infer(namespace["model"], namespace["method"], namespace["x"], key=jax.random.key(0),
                       progress=False, checkpoint=path, checkpoint_every=None if path is None else 2000)


def test_a_killed_fit_resumes_to_the_uninterrupted_result(tmp_path):
    path = str(tmp_path / "fit.ckpt")
    script = MODEL + f"\njaxvi.infer(model, method, x, key=jax.random.key(0), progress=False, checkpoint={path!r}, " \
                     f"checkpoint_every=2000)\n"
    child = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 300
    while not os.path.exists(path) and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    stored, meta = load_tree(path)
    done = int(stored["state/.n_iter"][0])
    assert 0 < done < STEPS and done % 2000 == 0                    # killed mid-way, after a whole chunk
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
    resumed = fit(path)
    uninterrupted = fit()
    assert int(resumed.n_iter) == STEPS
    np.testing.assert_array_equal(resumed.trace, uninterrupted.trace)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.guide_params), jax.tree_util.tree_leaves(uninterrupted.guide_params)):
        np.testing.assert_array_equal(a, b)
    # a finished checkpoint resumes to the same result at once
    again = fit(path)
    np.testing.assert_array_equal(again.trace, uninterrupted.trace)


def test_a_checkpoint_of_another_fit_is_refused(tmp_path):
    path = str(tmp_path / "em.ckpt")
    x = np.random.default_rng(1).normal(size=(50, 2)).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(2)
    method = jaxvi.EM(m_step=gm.m_step, max_iter=5, tol=0.0)
    first = jaxvi.infer(gm.model, method, x, key=jax.random.key(0), progress=False, checkpoint=path)
    same = jaxvi.infer(gm.model, method, x, key=jax.random.key(0), progress=False, checkpoint=path)
    np.testing.assert_array_equal(first.trace, same.trace)
    with pytest.raises(ValueError, match="another data"):
        jaxvi.infer(gm.model, method, x + 1.0, key=jax.random.key(0), progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="another key than"):
        jaxvi.infer(gm.model, method, x, key=jax.random.key(1), progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="checkpoint_every"):
        jaxvi.infer(gm.model, method, x, key=jax.random.key(0), checkpoint=path, checkpoint_every=0)
    with pytest.raises(ValueError, match="inside jit or vmap"):
        jax.jit(lambda d: jaxvi.infer(gm.model, method, d, key=jax.random.key(0), checkpoint=path).objective)(x)

