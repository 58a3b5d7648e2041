"""A custom model by EM: a mixture of two linear regressions, written as a log-joint (gradient M-step)."""
import jax
import jax.numpy as jnp
import numpy as np

import jaxvi
from _size import size

rng = np.random.default_rng(0)
n = size(1000, 200)
x = rng.uniform(-3, 3, n)
line = rng.integers(0, 2, n)
y = np.where(line == 0, 1.0 + 2.0 * x, -1.0 - 0.5 * x) + 0.4 * rng.normal(size=n)
data = {"x": x.astype(np.float32), "y": y.astype(np.float32)}


def log_joint(params, z, d):                    # one point (x, y), the line z in {0, 1}
    log_w = jax.nn.log_softmax(params["logits"])
    mean = params["intercept"][z] + params["slope"][z] * d["x"]
    return log_w[z] + jax.scipy.stats.norm.logpdf(d["y"], mean, jnp.exp(params["log_sigma"]))


def init(key, d):
    return {"logits": jnp.zeros(2), "intercept": jax.random.normal(key, (2,)), "slope": jnp.array([1.0, -1.0]),
            "log_sigma": jnp.zeros(())}


model = jaxvi.Model(log_joint, jaxvi.Discrete(2), init)
result = jaxvi.infer(model, jaxvi.EM(n_init=4, max_iter=size(200, 30)), data, key=jax.random.key(0))
p = result.params
print(f"lines: y = {float(p['intercept'][0]):.2f} + {float(p['slope'][0]):.2f} x and "
      f"y = {float(p['intercept'][1]):.2f} + {float(p['slope'][1]):.2f} x; noise sd {float(jnp.exp(p['log_sigma'])):.3f}")
print(f"log p(D) = {float(result.objective):.2f}")
