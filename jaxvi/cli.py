"""The command line: ``jaxvi demo`` (also ``python -m jaxvi demo``)."""
from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main", "demo"]


def demo(quick: bool = False) -> dict:
    """Fits a Gaussian mixture by EM (closed-form and gradient M-steps) on simulated data and prints
    log p(D) = ELBO + KL for the exact posterior and for a deliberately blurred one.

    Returns the printed numbers, for tests.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxvi
    from jaxvi.exact import elbo

    n = 600 if quick else 6000
    rng = np.random.default_rng(0)
    centers = np.array([[-4.0, 0.0], [0.0, 3.0], [4.0, 0.0]])
    x = (centers[rng.integers(0, 3, n)] + rng.normal(size=(n, 2))).astype(np.float32)
    print(f"jaxvi demo: a 3-component Gaussian mixture on {n} simulated 2-D points (jax {jax.__version__}, "
          f"{jax.devices()[0].platform})")
    gm = jaxvi.models.gaussian_mixture(3)
    numbers = {}
    for name, method in [("EM, closed-form M-step", jaxvi.EM(m_step=gm.m_step, n_init=4)),
                         ("EM, gradient (L-BFGS) M-step", jaxvi.EM(n_init=4))]:
        start = time.perf_counter()
        result = jaxvi.infer(gm.model, method, x, key=jax.random.key(0))
        seconds = time.perf_counter() - start
        numbers[name] = float(result.objective)
        print(f"  {name:30s} log p(D) = {float(result.objective):.3f} after {int(result.n_iter)} iterations "
              f"({seconds:.1f} s with compilation); weights {np.round(np.asarray(result.params.weights), 3)}")
    post = result.posterior(x)
    blurred = jax.nn.log_softmax(0.5 * post.log_probs, axis=1)  # a q that is not the posterior
    for label, log_q in [("exact posterior q = p(z|x)", post.log_probs), ("blurred q", blurred)]:
        bound = float(jnp.sum(elbo(gm.model.log_joint, gm.model.latent, result.params, x, log_q)))
        gap = float(jnp.sum(post.kl_from(log_q)))
        numbers[label] = (bound, gap)
        print(f"  {label:30s} ELBO {bound:.3f} + KL {gap:.3f} = {bound + gap:.3f}  (log p(D) = "
              f"{float(jnp.sum(post.log_evidence)):.3f})")
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxvi", description="jaxvi: latent-variable models fitted with JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="fit a model and show log p(D) = ELBO + KL")
    run_demo.add_argument("--quick", action="store_true", help="a small data set, for a smoke run")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
