"""A custom Bayesian model by SVI: a hierarchical regression of simulated group data (partial pooling).

Group j has intercept a_j ~ N(mu, tau^2); y_ij ~ N(a_j + b x_ij, sigma^2). All unknowns are one Global
latent; tau and sigma are positive through a bijector. A full-rank guide keeps their correlations.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxvi
from _size import size

rng = np.random.default_rng(0)
groups, per_group = 8, size(30, 10)
true_a = 1.0 + 0.7 * rng.normal(size=groups)
group = np.repeat(np.arange(groups), per_group)
x = rng.normal(size=groups * per_group)
y = true_a[group] + 0.5 * x + 0.8 * rng.normal(size=x.size)
data = {"g": group, "x": x.astype(np.float32), "y": y.astype(np.float32)}


def log_prior(params, z):
    norm = jax.scipy.stats.norm.logpdf
    return (norm(z["mu"], 0, 5) + norm(z["b"], 0, 5) + jax.scipy.stats.expon.logpdf(z["tau"])
            + jax.scipy.stats.expon.logpdf(z["sigma"]) + jnp.sum(norm(z["a"], z["mu"], z["tau"])))


def log_lik(params, z, d):
    return jax.scipy.stats.norm.logpdf(d["y"], z["a"][d["g"]] + z["b"] * d["x"], z["sigma"])


latent = jaxvi.Global({"mu": jaxvi.Real(()), "b": jaxvi.Real(()), "a": jaxvi.Real((groups,)),
                       "tau": jaxvi.Real((), bijector=jaxvi.positive()),
                       "sigma": jaxvi.Real((), bijector=jaxvi.positive())}, log_prior)
model = jaxvi.Model(log_lik, latent, init=lambda key, d: {})
method = jaxvi.SVI(guide=jaxvi.FullRank(), num_steps=size(5000, 300), num_particles=4,
                   optimizer=optax.adam(optax.exponential_decay(2e-2, size(5000, 300), 0.05)))
result = jaxvi.infer(model, method, data, key=jax.random.key(0))
q = result.posterior()
mean, sd = q.mean(jax.random.key(1)), q.stddev(jax.random.key(1))
for name in ("mu", "b", "tau", "sigma"):
    print(f"{name:6s} {float(mean[name]):7.3f} ± {float(sd[name]):.3f}")
print("group intercepts (true):  ", np.round(true_a, 2))
print("group intercepts (fitted):", np.round(np.asarray(mean["a"]), 2))
print(f"ELBO = {float(result.objective):.2f} ± {float(result.diagnostics.elbo_stderr):.2f}")
