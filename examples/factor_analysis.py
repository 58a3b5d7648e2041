"""Factor analysis and probabilistic PCA of the wine measurements: exact Gaussian E-steps."""
import jax
import numpy as np
from sklearn.datasets import load_wine

import jaxvi
from _size import size

x = load_wine().data
x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)  # float32 resolves log p(D) to ~3e-5 per datum: tol above that
for name, zoo in (("factor analysis", jaxvi.models.factor_analysis(3)), ("PPCA", jaxvi.models.ppca(3))):
    result = jaxvi.infer(zoo.model, jaxvi.EM(m_step=zoo.m_step, max_iter=size(500, 50), tol=5e-5), x,
                         key=jax.random.key(0))
    post = result.posterior(x)
    print(f"{name}: log p(D) = {float(result.objective):.2f}; noise variances "
          f"{np.round(np.asarray(result.params.noise_variance), 3)}; first wine's factors {np.round(post.mean[0], 2)}")
