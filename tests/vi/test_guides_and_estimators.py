"""Guides against dense references, bijectors against autodiff Jacobians, estimators unbiased."""
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxvi
from jaxvi.vi import guides, space
from jaxvi.vi.objectives import estimate, particle_terms


# --- guides -----------------------------------------------------------------------------------------

def perturbed(guide, dim, seed=0):
    params = guide.init(jax.random.key(seed), dim, jnp.float64)
    noise = lambda a, k: a + 0.4 * jax.random.normal(k, a.shape, a.dtype)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [noise(a, k) for a, k in zip(leaves, keys)])


def dense_covariance(guide, params):
    if isinstance(guide, guides.MeanField):
        return np.diag(np.asarray(jax.nn.softplus(params["scale"])) ** 2)
    if isinstance(guide, guides.FullRank):
        raw = np.asarray(params["scale_tril"])
        tril = np.tril(raw, -1) + np.diag(np.log1p(np.exp(np.diagonal(raw))))
        return tril @ tril.T
    scale = np.asarray(jax.nn.softplus(params["scale"]))
    return np.diag(scale**2) + np.asarray(params["factor"]) @ np.asarray(params["factor"]).T


@pytest.mark.parametrize("guide", [guides.MeanField(), guides.FullRank(), guides.LowRank(2)])
def test_gaussian_guides_match_a_dense_multivariate_normal(guide):
    dim = 4
    with jax.enable_x64(True):
        params = perturbed(guide, dim)
        cov = dense_covariance(guide, params)
        reference = scipy.stats.multivariate_normal(np.asarray(params["loc"]), cov)
        # jitted: op by op, each guide's functions compiled 30-60 small programs
        u, log_q = jax.jit(guide.sample_and_log_prob, static_argnums=2)(params, jax.random.key(3), 50_000)
        np.testing.assert_allclose(log_q[:20], reference.logpdf(np.asarray(u[:20])), rtol=1e-10)
        np.testing.assert_allclose(jax.jit(guide.log_prob)(params, u[:20]), log_q[:20], rtol=1e-12)
        np.testing.assert_allclose(jax.jit(guide.entropy)(params), reference.entropy(), rtol=1e-10)
        np.testing.assert_allclose(jax.jit(guide.mean)(params), params["loc"])
        np.testing.assert_allclose(jax.jit(guide.stddev)(params), np.sqrt(np.diag(cov)), rtol=1e-10)
        # the draws have the guide's moments (4.5 standard errors)
        se = np.sqrt(np.diag(cov) / u.shape[0])
        assert np.all(np.abs(np.mean(np.asarray(u), axis=0) - np.asarray(params["loc"])) < 4.5 * se)
        np.testing.assert_allclose(np.cov(np.asarray(u).T), cov, atol=0.05 * np.max(np.abs(cov)))


def test_flow_density_is_the_change_of_variables_of_its_base():
    guide = guides.Flow(num_layers=3, hidden=(8,))
    with jax.enable_x64(True):
        params = perturbed(guide, 3, seed=4)
        log_prob = jax.jit(guide.log_prob)  # jitted: op by op, the flow's layers compiled 100 small programs
        u, log_q = jax.jit(guide.sample_and_log_prob, static_argnums=2)(params, jax.random.key(5), 7)
        np.testing.assert_allclose(log_prob(params, u), log_q, rtol=1e-10)
        # the density integrates to one: importance sampling from a wide Normal
        wide = scipy.stats.multivariate_normal(np.zeros(3), 9.0 * np.eye(3))
        points = wide.rvs(200_000, random_state=0)
        ratio = np.exp(np.asarray(log_prob(params, jnp.asarray(points))) - wide.logpdf(points))
        assert abs(ratio.mean() - 1.0) < 4.5 * ratio.std() / np.sqrt(len(points))
    assert guide.entropy(params) is None and not guide.has_entropy


def test_a_fresh_flow_is_its_base():
    guide, base = guides.Flow(), guides.MeanField()
    params = guide.init(jax.random.key(0), 4)
    u = jax.random.normal(jax.random.key(1), (5, 4))
    np.testing.assert_allclose(guide.log_prob(params, u),
                               base.log_prob({"loc": params["loc"], "scale": params["scale"]}, u), rtol=1e-6)


def test_delta_and_categorical():
    delta = guides.Delta()
    params = {"loc": jnp.array([1.0, -2.0])}
    u, log_q = delta.sample_and_log_prob(params, jax.random.key(0), 3)
    np.testing.assert_array_equal(u, np.tile([1.0, -2.0], (3, 1)))
    np.testing.assert_array_equal(log_q, 0.0)
    cat = guides.Categorical()
    logits = jnp.log(jnp.array([0.2, 0.5, 0.3]))
    draws, log_q = cat.sample_and_log_prob({"logits": logits}, jax.random.key(1), 40_000)
    np.testing.assert_allclose(log_q, logits[draws], rtol=1e-6)
    freq = np.bincount(np.asarray(draws), minlength=3) / 40_000
    assert np.all(np.abs(freq - [0.2, 0.5, 0.3]) < 4.5 * np.sqrt(0.25 / 40_000))
    np.testing.assert_allclose(cat.entropy({"logits": logits}), -np.sum([0.2, 0.5, 0.3] * np.log([0.2, 0.5, 0.3])),
                               rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: guides.MeanField(init_scale=0.0), "init_scale"),
    (lambda: guides.LowRank(rank=0), "rank"),
    (lambda: guides.Flow(num_layers=0), "num_layers"),
])
def test_bad_guide_settings(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- bijectors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bijector, size", [
    (space.positive(), 3), (space.interval(-1.0, 4.0), 3), (space.ordered(), 4), (space.simplex(), 4),
])
def test_bijector_log_det_equals_the_autodiff_jacobian(bijector, size):
    with jax.enable_x64(True):
        free_size = size - 1 if isinstance(bijector, space.Simplex) else size
        u = jax.random.normal(jax.random.key(size), (free_size,), jnp.float64)
        z, log_det = bijector.forward_and_log_det(u)
        forward = lambda v: bijector.forward_and_log_det(v)[0]
        jacobian = jax.jacobian(forward)(u)
        if isinstance(bijector, space.Simplex):
            jacobian = jacobian[:-1]  # the density is on the first K - 1 coordinates
            np.testing.assert_allclose(jnp.sum(z), 1.0, rtol=1e-12)
            assert np.all(np.asarray(z) > 0)
        np.testing.assert_allclose(jnp.sum(log_det), np.linalg.slogdet(np.asarray(jacobian))[1], rtol=1e-10)
    if isinstance(bijector, space.Ordered):
        assert np.all(np.diff(np.asarray(z)) > 0)


def test_positive_and_interval_are_distrax_bijectors_with_value_equality():
    for make in (space.positive, lambda: space.interval(-1.0, 4.0)):
        assert isinstance(make().as_distrax(), distrax.Bijector)
        assert make() == make() and hash(make()) == hash(make())  # a Model is a static jit argument
    with jax.enable_x64(True):
        u = jnp.array([-12.0, -9.5, 0.3, 7.0], jnp.float64)
        z, _ = space.interval(-1.0, 4.0).forward_and_log_det(u)
        np.testing.assert_allclose(z, -1.0 + 5.0 * jax.nn.sigmoid(u), rtol=1e-14)  # exact sigmoid, also below u = -9
        np.testing.assert_allclose(space.interval(-1.0, 4.0).inverse(z), u, rtol=1e-9)


def test_the_uniform_point_of_the_simplex_is_at_zero():
    z, _ = space.simplex().forward_and_log_det(jnp.zeros(3))
    np.testing.assert_allclose(z, 0.25, rtol=1e-6)


def test_latent_space_flattens_a_pytree_of_specs():
    latent = {"a": jaxvi.Real((2, 3)), "b": jaxvi.Real((), bijector=jaxvi.positive()),
              "c": jaxvi.Real((3,), bijector=jaxvi.simplex())}
    sp = space.latent_space(latent)
    assert sp.dim == 6 + 1 + 2
    u = jnp.arange(9.0) / 10
    z, log_det = sp.constrain(u)
    assert z["a"].shape == (2, 3) and z["b"].shape == () and z["c"].shape == (3,)
    np.testing.assert_allclose(z["a"].ravel(), u[:6])
    np.testing.assert_allclose(z["b"], np.exp(0.6), rtol=1e-6)
    expected = 0.6 + space.simplex().forward_and_log_det(u[7:])[1]
    np.testing.assert_allclose(log_det, expected, rtol=1e-6)


# --- estimators: unbiased gradients on a Gaussian toy -----------------------------------------------

TARGET_MEAN, TARGET_SD = np.array([1.0, -0.5]), np.array([2.0, 0.7])  # NumPy: float64 under enable_x64


def toy_log_joint_at(u):
    return jnp.sum(jax.scipy.stats.norm.logpdf(u, TARGET_MEAN, TARGET_SD)), jnp.zeros(()), ()


def exact_elbo(params):
    """E_q[log N(u; m, s^2)] + H[q] for q = N(loc, diag(softplus(scale)^2)), in closed form."""
    loc, sd = params["loc"], jax.nn.softplus(params["scale"])
    expected = -0.5 * jnp.log(2 * math.pi * TARGET_SD**2) - ((loc - TARGET_MEAN) ** 2 + sd**2) / (2 * TARGET_SD**2)
    return jnp.sum(expected + 0.5 * jnp.log(2 * math.pi * math.e * sd**2))


@pytest.mark.parametrize("estimator, particles", [("elbo", 1), ("analytic", 1), ("stl", 1), ("score", 4),
                                                  ("elbo", 3)])
def test_gradient_estimators_are_unbiased(estimator, particles):
    guide = guides.MeanField()
    with jax.enable_x64(True):
        params = {"loc": jnp.array([0.3, 0.2]), "scale": jnp.array([0.1, -0.6])}
        truth = jax.grad(exact_elbo)(params)

        def one(key):
            def surrogate(p):
                terms, _ = particle_terms(toy_log_joint_at, guide, p, key, particles, estimator)
                return estimate(terms, estimator)[0]
            return jax.grad(surrogate)(params)

        grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(7), 40_000))
        for name in ("loc", "scale"):
            mean = np.mean(np.asarray(grads[name]), axis=0)
            se = np.std(np.asarray(grads[name]), axis=0) / np.sqrt(40_000)
            assert np.all(np.abs(mean - np.asarray(truth[name])) < 4.5 * se + 1e-12), (name, mean, truth[name], se)


def test_stl_has_zero_variance_when_q_is_the_target():
    guide = guides.MeanField()
    with jax.enable_x64(True):
        params = {"loc": jnp.asarray(TARGET_MEAN), "scale": jnp.asarray(np.log(np.expm1(TARGET_SD)))}

        def one(key, estimator):
            def surrogate(p):
                terms, _ = particle_terms(toy_log_joint_at, guide, p, key, 1, estimator)
                return estimate(terms, estimator)[0]
            return jax.grad(surrogate)(params)["loc"]

        keys = jax.random.split(jax.random.key(0), 200)
        stl = jax.jit(jax.vmap(lambda k: one(k, "stl")))(keys)  # jitted: op by op, 70 small programs to compile
        plain = jax.jit(jax.vmap(lambda k: one(k, "elbo")))(keys)
    np.testing.assert_allclose(stl, 0.0, atol=1e-12)
    assert np.std(np.asarray(plain)) > 0.1


def test_iwae_rises_with_k_and_stays_below_log_p():
    """Target: an unnormalised N(0, 1) with log Z = 1.3 known; q = N(0.5, 0.8^2) is off."""
    guide = guides.MeanField()
    params = {"loc": jnp.array([0.5]), "scale": jnp.array([np.log(np.expm1(0.8))])}

    def log_joint_at(u):
        return 1.3 + jnp.sum(jax.scipy.stats.norm.logpdf(u)), jnp.zeros(()), ()

    bounds = []
    for k in (1, 4, 32, 256):
        keys = jax.random.split(jax.random.key(k), 4000)
        values = jax.jit(jax.vmap(lambda key: estimate(particle_terms(log_joint_at, guide, params, key, k, "iwae")[0],
                                                       "iwae")[1]))(keys)
        bounds.append((float(np.mean(values)), float(np.std(values) / np.sqrt(4000))))
    means = [b[0] for b in bounds]
    assert all(a < b for a, b in zip(means, means[1:])), bounds
    assert all(m < 1.3 + 4.5 * s for m, s in bounds)
    assert abs(means[-1] - 1.3) < 0.01
