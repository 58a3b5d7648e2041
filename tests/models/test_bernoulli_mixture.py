"""The Bernoulli mixture (log-joint only, EM's gradient M-step) against an independent NumPy EM with the closed-form
M-step, on scikit-learn's digits binarised (1797 x 64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit, logsumexp, softmax
from sklearn.datasets import load_digits

import jaxvi

K = 10


def em_step(x, weights, probs):
    r"""One closed-form EM step for a mixture of Bernoulli products: returns the mean log-likelihood at
    ``(weights, probs)`` and the next ones, :math:`\pi_k = \bar r_k`, :math:`p_{kd} = \sum_i r_{ik} x_{id} / \sum_i r_{ik}`."""
    # sum_d xlogy(x_id, p_kd) + xlog1py(1 - x_id, -p_kd) for x of zeros and ones, as matrix products over the
    # pixels (N x K, not N x K x D): each pixel's term is log p_kd where x_id = 1 and log(1 - p_kd) where x_id = 0,
    # and 0 log 0 = 0 where a probability reaches exactly 0 or 1 (a 1 at such a pixel makes the term -inf)
    assert np.all((x == 0) | (x == 1))
    with np.errstate(divide="ignore"):
        log_on, log_off = np.log(probs), np.log1p(-probs)
    joint = (x @ np.where(probs > 0, log_on, 0.0).T + (1 - x) @ np.where(probs < 1, log_off, 0.0).T
             + np.where(x @ (probs == 0).T + (1 - x) @ (probs == 1).T > 0, -np.inf, 0.0))
    joint = np.log(weights) + joint
    log_likelihood = logsumexp(joint, axis=1)
    resp = np.exp(joint - log_likelihood[:, None])
    probs = np.clip(resp.T @ x / resp.sum(axis=0)[:, None], 0.0, 1.0)  # rounding can pass 1 by an ulp
    return log_likelihood.mean(), resp.mean(axis=0), probs


def numpy_em(x, weights, probs, tol):
    """EM until the mean log-likelihood changes by less than ``tol``; returns the last one evaluated."""
    previous = -np.inf
    for _ in range(10_000):
        current, weights, probs = em_step(x, weights, probs)
        assert np.isfinite(current)
        if current - previous < tol:
            return current
        previous = current
    raise AssertionError("NumPy EM did not converge in 10,000 iterations")


@pytest.fixture(scope="module")
def digits():
    return (load_digits().data > 7).astype(np.float64)


def test_default_fit_reaches_closed_form_em_on_digits(digits, optimized_code):
    """From the same start: EM's defaults (tol=1e-3 per datum) end above closed-form EM stopped by the same rule
    (-19.2325 against -19.3312), and EM(tol=1e-5), continued from there, ends within 1e-3 per datum of the optimum closed-form EM
    reaches when continued from its fit (-19.2304 against -19.2298; from the defaults' fit 2.7e-3 is left: the
    gradient M-step climbs slower near the optimum than the closed form, so EM's rule stops it sooner) and no
    lower than closed-form EM run to convergence from the start (-19.2443: some of its pixel probabilities reach
    exactly 0 and strand a component, which finite logits never do)."""
    model = jaxvi.models.bernoulli_mixture(K)
    with jax.enable_x64(True):
        x = jnp.asarray(digits)
        fits = {1e-3: jaxvi.infer(model, jaxvi.EM(tol=1e-3), x, key=jax.random.key(0), progress=False)}
        # EM(tol=1e-5) from the same start passes through the defaults' fit: continue from there
        fits[1e-5] = jaxvi.infer(model, jaxvi.EM(tol=1e-5), x, key=jax.random.key(0), progress=False,
                                 init_params=fits[1e-3].params)
        start = model.init(jax.random.split(jax.random.key(0))[0], x)  # restart 0's init key (see EM's n_init)
        fitted = fits[1e-5].params
        start, fitted = [(softmax(np.asarray(p.logits)), expit(np.asarray(p.pixel_logits))) for p in (start, fitted)]
    per_datum = {tol: float(fit.objective) / len(digits) for tol, fit in fits.items()}
    assert all(bool(fit.converged) for fit in fits.values())
    assert per_datum[1e-3] > numpy_em(digits, *start, tol=1e-3)
    np.testing.assert_allclose(em_step(digits, *fitted)[0], per_datum[1e-5], rtol=1e-12)  # the same log-likelihood
    assert 0 <= numpy_em(digits, *fitted, tol=1e-10) - per_datum[1e-5] < 1e-3
    assert per_datum[1e-5] > numpy_em(digits, *start, tol=1e-10)
    for fit in fits.values():
        trace = np.asarray(fit.trace)[: int(fit.n_iter) + 1]
        assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))
