"""A mixture of Bernoulli products on binarised digits, written only as a log-joint: EM's gradient M-step."""
import jax
import numpy as np
from sklearn.datasets import load_digits

import jaxvi
from _size import size

x = (load_digits().data > 8).astype(np.float32)[: size(1797, 300)]
model = jaxvi.models.bernoulli_mixture(10)
result = jaxvi.infer(model, jaxvi.EM(max_iter=size(100, 10)), x, key=jax.random.key(0))
print(f"log p(D) per image: {float(result.objective) / len(x):.4f} after {int(result.n_iter)} iterations")
print("mixture weights:", np.round(np.asarray(jax.nn.softmax(result.params.logits)), 3))
