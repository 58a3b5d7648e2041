"""Exponential-family factors (jaxvi.vi.expfam): every quantity derived from T and A by autodiff equals
TensorFlow Probability's independent implementation, and natural parameters read off a conjugate log-joint's
gradient equal the closed-form posterior's."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import digamma, multigammaln
from tensorflow_probability.substrates import jax as tfp

from jaxvi import latents
from jaxvi.vi import expfam
from jaxvi.vi.factors import Factor, sample_factors

tfd = tfp.distributions
RTOL = 1e-10


def wishart_eta(nu, scale):
    d = scale.shape[-1]
    return (-0.5 * jnp.linalg.inv(scale), jnp.asarray((nu - d - 1) / 2))


def normal_eta(mean, precision):
    return (precision @ mean, -0.5 * precision)


# (family, natural parameters, the same distribution in TFP, a value in the support)
def cases():
    scale = jnp.array([[2.0, 0.3], [0.3, 1.0]])
    precision = jnp.array([[2.0, 0.3], [0.3, 1.0]])
    mean = jnp.array([1.0, -1.0])
    return {
        "beta": (expfam.BETA, (jnp.array([1.5, 0.2]), jnp.array([3.0, 0.7])),
                 tfd.Beta(jnp.array([2.5, 1.2]), jnp.array([4.0, 1.7])), jnp.array([0.3, 0.6])),
        "gamma": (expfam.GAMMA, (jnp.array([2.0, 0.5]), jnp.array([-3.0, -0.2])),
                  tfd.Gamma(jnp.array([3.0, 1.5]), jnp.array([3.0, 0.2])), jnp.array([0.7, 4.0])),
        "dirichlet": (expfam.DIRICHLET, (jnp.array([[0.0, 1.0, 2.0], [-0.5, -0.5, 3.0]]),),
                      tfd.Dirichlet(jnp.array([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0]])),
                      jnp.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])),
        "wishart": (expfam.WISHART, wishart_eta(5.0, scale), tfd.WishartTriL(5.0, jnp.linalg.cholesky(scale)),
                    jnp.array([[3.0, 0.5], [0.5, 2.0]])),
        "normal": (expfam.NORMAL, normal_eta(mean, precision),
                   tfd.MultivariateNormalFullCovariance(mean, jnp.linalg.inv(precision)), jnp.array([0.2, 0.3])),
    }


@pytest.mark.parametrize("name", ["beta", "gamma", "dirichlet", "wishart", "normal"])
def test_entropy_density_and_kl_equal_tfp(name):
    with jax.enable_x64(True):
        family, eta, dist, z = cases()[name]
        entropy, log_density, kl_divergence = (jax.jit(f, static_argnums=0) for f in (  # jitted: op by op, 30-70
            expfam.entropy, expfam.log_density, expfam.kl_divergence))                # small programs a family
        np.testing.assert_allclose(entropy(family, eta), dist.entropy(), rtol=RTOL)
        np.testing.assert_allclose(log_density(family, eta, z), dist.log_prob(z), rtol=RTOL)
        # KL against a second member of the family: the same distribution with its natural parameters moved
        other_eta = tuple(e * 0.7 + (0.1 if e.ndim <= family.stat_ndims[0] else 0.0) for e in eta)
        if name == "wishart":
            other_eta = wishart_eta(7.0, jnp.array([[1.0, -0.2], [-0.2, 3.0]]))
            other = None
        elif name == "normal":
            other_eta = normal_eta(jnp.array([0.0, 2.0]), jnp.array([[1.0, -0.2], [-0.2, 3.0]]))
            other = tfd.MultivariateNormalFullCovariance(jnp.array([0.0, 2.0]),
                                                         jnp.linalg.inv(jnp.array([[1.0, -0.2], [-0.2, 3.0]])))
        elif name == "beta":
            other = tfd.Beta(other_eta[0] + 1, other_eta[1] + 1)
        elif name == "gamma":
            other = tfd.Gamma(other_eta[0] + 1, -other_eta[1])
        else:
            other = tfd.Dirichlet(other_eta[0] + 1)
        truth = wishart_kl(5.0, jnp.array([[2.0, 0.3], [0.3, 1.0]]), 7.0, jnp.array([[1.0, -0.2], [-0.2, 3.0]])
                           ) if name == "wishart" else tfd.kl_divergence(dist, other)   # TFP has no Wishart KL
        np.testing.assert_allclose(kl_divergence(family, eta, other_eta), truth, rtol=1e-8)


def wishart_kl(nu_q, scale_q, nu_p, scale_p):
    """KL(W(nu_q, S_q) || W(nu_p, S_p)), the textbook closed form."""
    d = scale_q.shape[-1]
    multi_digamma = sum(digamma(nu_q / 2 + (1 - i) / 2) for i in range(1, d + 1))
    return (nu_p / 2 * (jnp.linalg.slogdet(scale_p)[1] - jnp.linalg.slogdet(scale_q)[1])
            + nu_q / 2 * (jnp.trace(jnp.linalg.solve(scale_p, scale_q)) - d)
            + multigammaln(nu_p / 2, d) - multigammaln(nu_q / 2, d) + (nu_q - nu_p) / 2 * multi_digamma)


def test_normal_wishart_density_and_kl_equal_the_closed_forms():
    """A Normal-Wishart factor, held about its mean (means 30 units out): log q(mu, L) equals TFP's
    N(mu | m, (b L)^-1) W(L | nu, W); KL(q || p) the Wishart's KL plus E_L KL of the Normals,
    1/2 (d b_p / b_q - d - d log(b_p / b_q) + b_p nu_q (m_q - m_p)^T W_q (m_q - m_p)); and log q of many values
    at once, as of each."""
    with jax.enable_x64(True):
        mean_q, mean_p = jnp.array([30.0, -29.0]), jnp.array([31.0, -30.5])
        scale_q, scale_p = jnp.array([[2.0, 0.3], [0.3, 1.0]]), jnp.array([[1.0, -0.2], [-0.2, 3.0]])
        q = expfam.normal_wishart_parameters(mean_q, jnp.array(3.0), jnp.linalg.inv(scale_q), jnp.array(5.0))
        p = expfam.normal_wishart_parameters(mean_p, jnp.array(0.5), jnp.linalg.inv(scale_p), jnp.array(7.0))
        mu, precision = jnp.array([29.5, -28.0]), jnp.array([[1.5, 0.2], [0.2, 0.8]])
        truth = (tfd.MultivariateNormalFullCovariance(mean_q, jnp.linalg.inv(3.0 * precision)).log_prob(mu)
                 + tfd.WishartTriL(5.0, jnp.linalg.cholesky(scale_q)).log_prob(precision))
        value = jnp.concatenate([mu[:, None], precision], axis=1)
        log_density = jax.jit(functools.partial(expfam.log_density, expfam.NORMAL_WISHART))  # jitted: op by op,
        np.testing.assert_allclose(log_density(q, value), truth, rtol=RTOL)                   # 100 small programs
        offset = mean_q - mean_p
        normals = 0.5 * (2 * 0.5 / 3.0 - 2 - 2 * jnp.log(0.5 / 3.0) + 0.5 * 5.0 * offset @ scale_q @ offset)
        np.testing.assert_allclose(jax.jit(functools.partial(expfam.kl_divergence, expfam.NORMAL_WISHART))(q, p),
                                   wishart_kl(5.0, scale_q, 7.0, scale_p) + normals, rtol=1e-10)
        # log q of many values of one factor (Factor.log_prob of draws): the event's sum was taken over the values'
        # axis for every family of vector statistics
        values = jnp.stack([value, value.at[:, 0].add(1.0)])
        factor_log_prob = jax.jit(lambda v: Factor(latents.NormalWishart(2), q).log_prob((v[:, :, 0], v[:, :, 1:])))
        np.testing.assert_allclose(factor_log_prob(values), jax.jit(jax.vmap(lambda v: log_density(q, v)))(values),
                                   rtol=RTOL)
        points = jnp.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
        np.testing.assert_allclose(Factor(latents.Dirichlet(3), (jnp.array([0.0, 1.0, 2.0]),)).log_prob(points),
                                   tfd.Dirichlet(jnp.array([1.0, 2.0, 3.0])).log_prob(points), rtol=RTOL)


def test_expected_statistics_equal_the_closed_forms():
    with jax.enable_x64(True):
        _, eta, dist, _ = cases()["beta"]
        a, b = eta[0] + 1, eta[1] + 1
        log_z, log_1mz = expfam.expected_statistics(expfam.BETA, eta)
        np.testing.assert_allclose(log_z, digamma(a) - digamma(a + b), rtol=RTOL)
        np.testing.assert_allclose(log_1mz, digamma(b) - digamma(a + b), rtol=RTOL)
        _, eta, dist, _ = cases()["gamma"]
        log_z, z = expfam.expected_statistics(expfam.GAMMA, eta)
        np.testing.assert_allclose(z, dist.mean(), rtol=RTOL)
        np.testing.assert_allclose(log_z, digamma(eta[0] + 1) - jnp.log(-eta[1]), rtol=RTOL)
        _, eta, dist, _ = cases()["wishart"]
        precision, log_det = expfam.expected_statistics(expfam.WISHART, eta)
        np.testing.assert_allclose(precision, dist.mean(), rtol=RTOL)
        scale, nu, d = jnp.array([[2.0, 0.3], [0.3, 1.0]]), 5.0, 2       # E log|L| (Bishop B.81)
        np.testing.assert_allclose(log_det, sum(digamma((nu - i) / 2) for i in range(d)) + d * jnp.log(2.0)
                                   + jnp.linalg.slogdet(scale)[1], rtol=RTOL)
        _, eta, dist, _ = cases()["normal"]
        mean, second = expfam.expected_statistics(expfam.NORMAL, eta)
        np.testing.assert_allclose(mean, dist.mean(), rtol=RTOL)
        np.testing.assert_allclose(second, dist.covariance() + jnp.outer(dist.mean(), dist.mean()), rtol=RTOL)


def test_natural_parameters_of_conjugate_log_joints_are_the_closed_form_posteriors():
    """The conditional of each conjugate pair, written as a user writes a log-joint (TFP densities), read off at
    3 points: the posterior's natural parameters (prior + data statistics), with both residuals at rounding."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        flips = jnp.asarray(rng.integers(0, 2, 20), jnp.float64)                       # Beta-Bernoulli
        bernoulli = lambda p: tfd.Beta(2.0, 3.0).log_prob(p) + jnp.sum(tfd.Bernoulli(probs=p).log_prob(flips))
        counts = jnp.asarray(rng.poisson([[2.0], [9.0]], (2, 15)), jnp.float64)        # Gamma-Poisson, 2 rates
        poisson = lambda rate: jnp.sum(tfd.Gamma(2.0, 0.5).log_prob(rate)) + jnp.sum(
            tfd.Poisson(rate=rate[:, None]).log_prob(counts))
        symbols = jnp.asarray(rng.integers(0, 3, 30))                                   # Dirichlet-categorical
        categorical = lambda w: tfd.Dirichlet(jnp.full(3, 2.0)).log_prob(w) + jnp.sum(jnp.log(w)[symbols])
        x = jnp.asarray(rng.normal(size=(25, 2)), jnp.float64)                         # Wishart-Normal
        prior_scale = jnp.array([[1.0, 0.2], [0.2, 2.0]])
        wishart = lambda lam: tfd.WishartTriL(4.0, jnp.linalg.cholesky(prior_scale)).log_prob(lam) + jnp.sum(
            tfd.MultivariateNormalFullCovariance(jnp.zeros(2), jnp.linalg.inv(lam)).log_prob(x))
        y = jnp.asarray(rng.normal(1.0, 1.0, 10), jnp.float64)                          # Normal-Normal
        normal = lambda mu: tfd.Normal(0.0, 2.0).log_prob(mu[0]) + jnp.sum(tfd.Normal(mu[0], 0.5).log_prob(y))
        expected = {
            "beta": (bernoulli, expfam.BETA, (jnp.array(1.0), jnp.array(1.0)),
                     (1.0 + flips.sum(), 2.0 + (1 - flips).sum())),
            "gamma": (poisson, expfam.GAMMA, (jnp.ones(2), -jnp.ones(2)),
                      (1.0 + counts.sum(1), -(0.5 + 15.0 * jnp.ones(2)))),
            "dirichlet": (categorical, expfam.DIRICHLET, (jnp.zeros(3),),
                          (1.0 + jnp.bincount(symbols, length=3),)),
            "wishart": (wishart, expfam.WISHART, wishart_eta(4.0, jnp.eye(2)),
                        (-0.5 * (jnp.linalg.inv(prior_scale) + x.T @ x), jnp.asarray((4.0 + 25 - 3) / 2))),
            "normal": (normal, expfam.NORMAL, normal_eta(jnp.zeros(1), jnp.eye(1)),
                       (jnp.array([y.sum() / 0.25]), -0.5 * jnp.array([[1 / 4.0 + 10 / 0.25]]))),
        }
        for name, (fn, family, start, truth) in expected.items():
            read = jax.jit(lambda start: expfam.natural_parameters(fn, family, family.points(start, 3)))
            beta, _, not_linear = read(start)
            for got, want in zip(beta, truth):
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=name)
            assert not_linear.gradient_residual < 1e-12 and not_linear.value_residual < 1e-12, (name, not_linear)


def test_the_constant_makes_the_function_exact_and_expectations_follow():
    """f(z) = c + beta . T(z) at a fourth point; E_q[f] by expect_linear equals a Monte Carlo average."""
    with jax.enable_x64(True):
        fn = lambda lam: jnp.sum(tfd.Gamma(2.0, 0.5).log_prob(lam)) + jnp.sum(3.0 * jnp.log(lam) - 2.0 * lam)
        beta, c, _ = expfam.natural_parameters(fn, expfam.GAMMA, expfam.GAMMA.points((jnp.ones(2), -jnp.ones(2)), 3))
        z = jnp.array([0.37, 5.2])
        np.testing.assert_allclose(fn(z), c + jnp.sum(beta[0] * jnp.log(z) + beta[1] * z), rtol=1e-12)
        eta = (jnp.array([1.5, 4.0]), jnp.array([-2.0, -1.0]))
        draws = tfd.Gamma(eta[0] + 1, -eta[1]).sample(200_000, seed=jax.random.key(0))
        np.testing.assert_allclose(expfam.expect_linear(expfam.GAMMA, eta, beta, c),
                                   jnp.mean(jax.vmap(fn)(draws)), rtol=2e-3)


@pytest.mark.parametrize("fn, family, start", [
    (lambda z: jnp.sum(z ** 2), expfam.GAMMA, (jnp.ones(2), -jnp.ones(2))),                 # quadratic in z
    (lambda p: jnp.sum(jnp.log(p) ** 2), expfam.BETA, (jnp.array(1.0), jnp.array(1.0))),  # (log p)^2
    (lambda lam: lam[0] * lam[1], expfam.GAMMA, (jnp.ones(2), -jnp.ones(2))),             # couples two factors
    (lambda mu: jnp.sum(mu ** 3), expfam.NORMAL, normal_eta(jnp.zeros(2), jnp.eye(2))),
])
def test_a_function_not_linear_in_the_statistics_shows_large_residuals(fn, family, start):
    with jax.enable_x64(True):
        _, _, not_linear = expfam.natural_parameters(fn, family, family.points(start, 3))
        assert max(float(not_linear.gradient_residual), float(not_linear.value_residual)) > 1e-3, not_linear


def test_coordinate_updates_of_a_normal_gamma_model_are_bishop_s_and_the_bound_rises():
    """Bishop 10.1.3: x_i ~ N(mu, 1/tau), mu | tau ~ N(mu0, 1/(lambda0 tau)), tau ~ Gamma(a0, b0), with
    q(mu) q(tau). Updates read off the log-joint (as a user writes it) equal Bishop's closed forms (10.26-10.30)
    sweep after sweep from the same start, and the bound E_q[log p] + H[q] never falls."""
    rng = np.random.default_rng(3)
    x = rng.normal(1.5, 0.7, 40)
    mu0, lambda0, a0, b0 = 0.0, 2.0, 3.0, 1.5
    with jax.enable_x64(True):
        data = jnp.asarray(x)

        def log_joint(mu, tau):
            return (jnp.sum(tfd.Normal(mu[0], jax.lax.rsqrt(tau)).log_prob(data))
                    + tfd.Normal(mu0, jax.lax.rsqrt(lambda0 * tau)).log_prob(mu[0]) + tfd.Gamma(a0, b0).log_prob(tau))

        families = (expfam.NORMAL, expfam.GAMMA)
        update = jax.jit(expfam.coordinate_update, static_argnums=(0, 1, 3))
        bound = jax.jit(lambda etas: expfam.expectation(log_joint, families, etas)[0]
                        + expfam.entropy(expfam.NORMAL, etas[0]).sum() + expfam.entropy(expfam.GAMMA, etas[1]))
        etas = [normal_eta(jnp.array([0.0]), jnp.array([[1.0]])), (jnp.array(0.0), jnp.array(-1.0))]
        e_tau = 1.0                                   # Bishop's iteration from the same q(tau) = Gamma(1, 1)
        n, bounds = len(x), []
        for sweep in range(6):
            for j in (0, 1):
                etas[j], residual = update(log_joint, families, tuple(etas), j)
                assert residual < 1e-10, (sweep, j, residual)
            mu_n, lambda_n = (lambda0 * mu0 + x.sum()) / (lambda0 + n), (lambda0 + n) * e_tau
            e_mu, e_mu2 = mu_n, mu_n ** 2 + 1 / lambda_n
            a_n = a0 + (n + 1) / 2
            b_n = b0 + 0.5 * ((x ** 2).sum() - 2 * e_mu * x.sum() + n * e_mu2
                              + lambda0 * (e_mu2 - 2 * mu0 * e_mu + mu0 ** 2))
            e_tau = a_n / b_n
            np.testing.assert_allclose(etas[0][0] / (-2 * etas[0][1][0]), [mu_n], rtol=1e-9)   # mean
            np.testing.assert_allclose(-2 * etas[0][1], [[lambda_n]], rtol=1e-9)               # precision
            np.testing.assert_allclose((etas[1][0] + 1, -etas[1][1]), (a_n, b_n), rtol=1e-9)
            bounds.append(float(bound(tuple(etas))))
        assert np.all(np.diff(bounds) >= -1e-10 * abs(bounds[0])), bounds
        # the bound at the fixed point, against a Monte Carlo estimate of E_q[log p] + H[q]
        key_mu, key_tau = jax.random.split(jax.random.key(0))
        mus = mu_n + jax.random.normal(key_mu, (100_000, 1)) / np.sqrt(lambda_n)
        taus = tfd.Gamma(a_n, b_n).sample(100_000, seed=key_tau)
        expected, _ = jax.jit(lambda etas: expfam.expectation(log_joint, families, etas))(tuple(etas))
        np.testing.assert_allclose(expected, jnp.mean(jax.vmap(log_joint)(mus, taus)), rtol=2e-3)


def test_closed_form_entropies_equal_the_log_normalizer_identity():
    """The Wishart's and Normal-Wishart's entropies are written in closed form (stable in float32); in float64
    they equal A(eta) - eta . grad A(eta), the identity the other families use."""
    with jax.enable_x64(True):
        mean = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
        scale_inverse = jnp.stack([jnp.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.5]]), 3.0 * jnp.eye(3)])
        eta = expfam.normal_wishart_parameters(mean, jnp.array([2.0, 40.0]), scale_inverse,
                                               jnp.array([4.5, 60.0]))
        for family, held in ((expfam.NORMAL_WISHART, eta), (expfam.WISHART, (-0.5 * scale_inverse,
                                                                               jnp.array([1.0, 20.0])))):
            def both(held, family=family):  # jitted: op by op, 100 small programs to compile
                natural = expfam.to_natural(family, held)
                identity = (expfam.log_normalizer(family, held)
                            - sum(jnp.sum(e * t, axis=tuple(range(1, e.ndim)))
                                  for e, t in zip(natural, expfam.expected_statistics(family, held))))
                return expfam.entropy(family, held), identity

            np.testing.assert_allclose(*jax.jit(both)(held), rtol=1e-12)


@pytest.mark.parametrize("name", ["gamma", "wishart", "normal-wishart", "normal", "dirichlet"])
def test_every_family_s_quadrature_rule_averages_its_statistics_to_their_expectations(name):
    """A rule is exact for every f linear in T iff its nodes' T (with their tangents) average to E[T]: checked
    against ``expected_statistics`` (closed forms, tested above), float64, for broad and narrow members."""
    with jax.enable_x64(True):
        scale_inverse = jnp.stack([jnp.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.5]]), 3.0 * jnp.eye(3)])
        mean = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
        family, eta = {
            "gamma": (expfam.GAMMA, (jnp.array([-0.5, 30.0]), jnp.array([-2.0, -0.1]))),
            "wishart": (expfam.WISHART, (-0.5 * scale_inverse, jnp.array([0.0, 20.0]))),
            "normal-wishart": (expfam.NORMAL_WISHART, expfam.normal_wishart_parameters(
                mean, jnp.array([0.01, 40.0]), scale_inverse, jnp.array([3.0, 60.0]))),
            "normal": (expfam.NORMAL, (jnp.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]), -0.5 * scale_inverse)),
            "dirichlet": (expfam.DIRICHLET, (jnp.array([[-0.9, 0.5, 9.0], [0.1, 0.1, 0.1]]),)),
        }[name]
        rule = expfam.quadrature(family, eta)
        averaged = expfam.expect_product(jax.vmap(family.statistics), (rule,))  # over the batch of two factors
        for got, want in zip(averaged, expfam.expected_statistics(family, eta)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_a_tangent_change_moves_the_dirichlet_rule_to_another_member_s_expectations():
    """With its nodes held, the Dirichlet's rule plus ``tangent_change`` toward another member gives that member's
    expectation of every f linear in log z, closed form (digamma), float64; families whose rules have no tangents
    get None."""
    with jax.enable_x64(True):
        eta = (jnp.array([[-0.9, 0.5, 9.0], [0.1, 0.1, 0.1]]),)
        origin = (jnp.array([[2.0, -0.5, 0.3], [30.0, 1.0, 0.0]]),)
        beta, c = jnp.array([[0.7, -1.2, 2.0], [1.5, 0.4, -0.3]]), 0.25
        rule = expfam.quadrature(expfam.DIRICHLET, eta)
        moved = rule._replace(tangents=rule.tangents + expfam.tangent_change(expfam.DIRICHLET, eta, origin))
        value = expfam.expect_product(lambda z: c + jnp.sum(beta * jnp.log(z), axis=-1), (moved,))
        alpha = origin[0] + 1
        expected_log = digamma(alpha) - digamma(jnp.sum(alpha, axis=-1, keepdims=True))
        np.testing.assert_allclose(value, c + jnp.sum(beta * expected_log, axis=-1), rtol=1e-12)
        assert expfam.tangent_change(expfam.GAMMA, (jnp.array([1.0]), jnp.array([-1.0])),
                                     (jnp.array([2.0]), jnp.array([-1.0]))) is None



def factor_cases():
    """(spec, natural parameters, the moments checked of a draw: ((mean, variance), ...) in closed form), float64."""
    a, b = jnp.array([2.5, 0.3]), jnp.array([4.0, 0.6])
    shape, rate = jnp.array([3.0, 0.3]), jnp.array([3.0, 0.5])
    alpha = jnp.array([0.3, 1.0, 4.0])
    probs = jnp.array([0.2, 0.5, 0.3])
    scale, nu = jnp.array([[2.0, 0.3], [0.3, 1.0]]), 5.0
    wishart = (nu * scale, nu * (scale ** 2 + jnp.outer(jnp.diag(scale), jnp.diag(scale))))
    mean, precision, strength = jnp.array([1.0, -1.0]), jnp.array([[2.0, 0.3], [0.3, 1.0]]), jnp.array(2.0)
    m, b0, a0, r0 = jnp.array([0.5]), jnp.array([3.0]), jnp.array([4.0]), jnp.array([2.0])  # Normal-Gamma
    return [
        (latents.Beta((2,)), (a - 1, b - 1), ((a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))),)),
        (latents.Gamma((2,)), (shape - 1, -rate), ((shape / rate, shape / rate ** 2),)),
        (latents.Dirichlet(3), (alpha - 1,),
         ((alpha / alpha.sum(), alpha * (alpha.sum() - alpha) / (alpha.sum() ** 2 * (alpha.sum() + 1))),)),
        (latents.OneHot(3), (jnp.log(probs),), ((probs, probs * (1 - probs)),)),
        (latents.Wishart(2), wishart_eta(nu, scale), (wishart,)),
        (latents.Gaussian(2), normal_eta(mean, precision), ((mean, jnp.diag(jnp.linalg.inv(precision))),)),
        (latents.NormalGamma((1,)),
         expfam.normal_wishart_parameters(m[:, None], b0, 2 * r0[:, None, None], 2 * a0),
         ((m, r0 / (b0 * (a0 - 1))), (a0 / r0, a0 / r0 ** 2))),
        (latents.NormalWishart(2),
         expfam.normal_wishart_parameters(mean, strength, jnp.linalg.inv(scale), jnp.array(nu)),
         ((mean, jnp.diag(jnp.linalg.inv(scale)) / (strength * (nu - 2 - 1))), wishart)),
    ]


def test_factor_draws_have_their_distribution_s_mean_and_variance():
    """One draw of every family at once (``sample_factors``: their log-Gamma draws made together, then
    ``Factor.from_standard_draws``), 20,000 times in float64: every sample mean and variance within 5 standard
    errors of its closed form (the variance's standard error estimated from the draws' fourth moment), a
    Beta(0.3, 0.6), a Gamma(0.3) and a Dirichlet with a 0.3 among them."""
    n = 20_000
    with jax.enable_x64(True):
        cases = factor_cases()
        factors = tuple(Factor(spec, tuple(jnp.asarray(e, jnp.float64) for e in eta)) for spec, eta, _ in cases)
        draws = jax.jit(jax.vmap(lambda k: sample_factors(factors, k)))(jax.random.split(jax.random.key(0), n))
        for (spec, _, truths), drawn in zip(cases, draws):
            for value, (mean, variance) in zip(drawn if isinstance(drawn, tuple) else (drawn,), truths):
                centred = np.asarray(value) - np.mean(value, 0)
                sample_variance = np.mean(centred ** 2, 0)
                variance_error = np.sqrt((np.mean(centred ** 4, 0) - sample_variance ** 2) / n)
                assert np.all(np.abs(np.mean(value, 0) - mean) < 5 * np.sqrt(variance / n)), (spec, np.mean(value, 0))
                assert np.all(np.abs(sample_variance - variance) < 5 * variance_error), (spec, sample_variance)
        one = factors[0].sample(jax.random.key(1), 3)  # n draws of one factor: the same sampler, vmapped over keys
        assert one.shape == (3, 2) and np.all((one > 0) & (one < 1))


def test_a_float32_normal_wishart_read_keeps_a_near_singular_scale_of_data_far_from_the_origin():
    """The Normal-Wishart posterior of 200 points in 6-D whose covariance has condition ~1e5 and whose mean lies 16
    units from the origin, read in float32 as CAVI reads it (``read_about`` at q's points, then ``from_natural``),
    against the closed form in float64 (Bishop 10.60-10.63, of the same float32 data): b and nu to float32 rounding,
    and W^-1 to float32's resolution of a matrix of its condition (eps cond(W^-1) ~ 1.5e-2, in the whitened
    directions). Held as natural parameters about the origin and read at q's own precisions, W^-1 was off by 89% in
    its smallest direction and b by 0.08%: the difference of two matrices of size b |m|^2, and solves with precisions
    of condition 1e5."""
    rng = np.random.default_rng(0)
    d, n = 6, 200
    mixing = rng.normal(size=(d, d)) @ np.diag(np.logspace(0, -2.5, d))
    x32 = jnp.asarray(rng.normal(size=(n, d)) @ mixing.T + 16.0, jnp.float32)
    x = np.asarray(x32, np.float64)
    m0, b0, nu0, psi0 = np.zeros(d), 1.0, d + 1.0, 1e-3 * np.eye(d)
    mean, b, nu = (b0 * m0 + x.sum(0)) / (b0 + n), b0 + n, nu0 + n
    scatter = (x - x.mean(0)).T @ (x - x.mean(0))
    w_inv = psi0 + scatter + b0 * n / b * np.outer(x.mean(0) - m0, x.mean(0) - m0)

    def log_joint(z):  # written as a user writes it, about the value's mean
        mu, precision = expfam.normal_wishart_parts(z)
        log_det = jnp.linalg.slogdet(precision)[1]
        data = jnp.sum(jax.vmap(lambda xi: 0.5 * (log_det - (xi - mu) @ precision @ (xi - mu)))(x32))
        prior = 0.5 * (d * jnp.log(b0) + log_det - b0 * (mu - m0) @ precision @ (mu - m0))
        return data + prior + 0.5 * (nu0 - d - 1) * log_det - 0.5 * jnp.sum(psi0 * precision)

    q = expfam.normal_wishart_parameters(*(jnp.asarray(a, jnp.float32) for a in (mean, b, w_inv, nu)))

    @jax.jit
    def read(q):
        beta, _, _, about = expfam.read_about(log_joint, expfam.NORMAL_WISHART, q, 2, values=False)
        return expfam.normal_wishart_moments(expfam.from_natural(expfam.NORMAL_WISHART, beta, about))

    got_mean, got_b, got_w_inv, got_nu = (np.asarray(a, np.float64) for a in read(q))
    np.testing.assert_allclose([got_b, got_nu], [b, nu], rtol=1e-5)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-6)
    whiten = np.linalg.cholesky(np.linalg.inv(w_inv))
    assert np.linalg.cond(w_inv) > 1e5
    assert np.abs(np.linalg.eigvalsh(whiten.T @ (got_w_inv - w_inv) @ whiten)).max() < 2e-2
