"""A variational autoencoder on binarised digits: amortized inference, test log-likelihood, refinement."""
import jax
import numpy as np
import optax
from sklearn.datasets import load_digits

import jaxvi
from _size import size

x = (load_digits().data > 8).astype(np.float32)
train, test = x[:1500], x[1500:]
vae = jaxvi.models.vae(latent_dim=8, data_dim=64, decoder=jaxvi.nn.mlp((size(256, 32),) * 2))
method = jaxvi.Amortized(encoder=jaxvi.nn.mlp((size(256, 32),) * 2), num_epochs=size(100, 3), batch_size=128,
                         optimizer=optax.adam(1e-3), patience=10)
result = jaxvi.infer(vae.model, method, train, key=jax.random.key(0))
print(result.summary())
q = result.posterior(test)
k = size(1000, 50)
plain = jaxvi.evidence(vae.model, result.params, test, key=jax.random.key(1), posterior=q, num_samples=k)
refined = jaxvi.evidence(vae.model, result.params, test, key=jax.random.key(1), num_samples=k,
                         posterior=method.refine(result, test, key=jax.random.key(2), num_steps=size(100, 10)))
print(f"test log-likelihood per image (IWAE-{k}): {float(plain.log_evidence) / len(test):.3f} from the encoder, "
      f"{float(refined.log_evidence) / len(test):.3f} after refinement")
