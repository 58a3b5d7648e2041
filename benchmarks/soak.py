"""Soak test: many random small fits of every method; how many end finite, how many stop with a clear
error, how many do anything else (the target: none).

Each of EM (Gaussian mixtures, Gaussian HMMs, factor analysis), SVI (a global model, local factor
analysis, a categorical guide) and amortized inference (a VAE) gets ``--fits`` fits (default 1,000
per method, split over its cases) on random data: random sizes from a few fixed shapes (so compiled code is reused), random scales from
1e-20 to 1e19, duplicated points, planted outliers (1e6 times the scale, or 1e30), degenerate data (every
point the same), one datum. A fit ends

- **finite**: returned, every parameter, objective and trace value finite;
- **clear error**: raised a ``ValueError`` (bad input) or a ``FloatingPointError`` (a numerical fault,
  naming the iteration and the datum, term or parameter leaf) whose ``err.result`` is finite;
- **other**: anything else (the target is 0), counted by kind: **silent** (a returned result with a
  non-finite value), **bad err.result** (a ``FloatingPointError`` whose last finite fit is not finite),
  and **exception** (any other exception).

Usage:
  python benchmarks/soak.py --json benchmarks/results/soak_cpu.json --markdown benchmarks/results/soak_cpu.md
  python benchmarks/soak.py --quick
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, write  # noqa: E402

FITS = 1_000
SHAPES = ((1, 2), (7, 2), (40, 2), (40, 3))  # (N, D): a few, so that compiled code is reused


def random_data(rng, n: int, d: int) -> np.ndarray:
    scale = 10.0 ** rng.uniform(-20, 19)
    kind = rng.choice(["normal", "clusters", "duplicates", "degenerate"])
    if kind == "degenerate":
        x = np.full((n, d), rng.normal() * scale)
    elif kind == "duplicates":
        x = np.repeat(rng.normal(size=(max(1, n // 4), d)), 4, axis=0)[:n] * scale
        x = np.concatenate([x, np.zeros((n - len(x), d))]) if len(x) < n else x
    elif kind == "clusters":
        x = (rng.normal(size=(n, d)) + rng.integers(0, 3, (n, 1)) * 5.0) * scale
    else:
        x = rng.normal(size=(n, d)) * scale
    if rng.uniform() < 0.3:
        x[rng.integers(0, n)] = 1e6 * scale if rng.uniform() < 0.5 else 1e30
    return x.astype(np.float32)


def fits():
    """``{case: (model, method, how to turn (N, D) data into its data)}`` built once, so compilations are reused."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxvi

    gm, gm1 = jaxvi.models.gaussian_mixture(3), jaxvi.models.gaussian_mixture(2, covariance="diag")
    hmm, fa = jaxvi.models.gaussian_hmm(2), jaxvi.models.factor_analysis(1)
    latent = jaxvi.Global({"mu": jaxvi.Real((2,)), "sd": jaxvi.Real((), bijector=jaxvi.positive())},
                          lambda p, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["mu"], 0, 10)) - z["sd"])
    global_model = jaxvi.Model(lambda p, z, x: jnp.sum(jax.scipy.stats.norm.logpdf(x[:2], z["mu"], z["sd"])),
                               latent, lambda k, d: {})
    vae = jaxvi.models.vae(2, 2, decoder=jaxvi.nn.mlp((8,)), likelihood="gaussian")
    as_is, as_sequences = (lambda x: x), (lambda x: x[None])
    return {
        "EM: GMM, full": (gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=30), as_is),
        "EM: GMM, diag, 3 restarts": (gm1.model, jaxvi.EM(m_step=gm1.m_step, max_iter=30, n_init=3), as_is),
        "EM: Gaussian HMM": (hmm.model, jaxvi.EM(m_step=hmm.m_step, max_iter=20), as_sequences),
        "EM: factor analysis": (fa.model, jaxvi.EM(m_step=fa.m_step, max_iter=30), as_is),
        "SVI: global model": (global_model, jaxvi.SVI(num_steps=60, optimizer=optax.adam(1e-2)), as_is),
        "SVI: local factor analysis": (fa.model, jaxvi.SVI(num_steps=60, optimizer=optax.adam(1e-2)), as_is),
        "SVI: categorical guide": (gm1.model, jaxvi.SVI(discrete="guide", num_particles=2, num_steps=30), as_is),
        "amortized: Gaussian VAE": (vae.model, jaxvi.Amortized(encoder=jaxvi.nn.mlp((8,)), num_steps=30,
                                                               batch_size=1, validation=0.0), as_is),
    }


def soak(n_fits: int, seed: int = 0) -> dict:
    import jax

    import jaxvi

    rng = np.random.default_rng(seed)
    outcomes = {}
    cases = fits()
    per_method = collections.Counter(case.split(":")[0] for case in cases)
    for case, (model, method, shape_data) in cases.items():
        counts, examples = collections.Counter(), {}
        started = time.perf_counter()
        for i in range(-(-n_fits // per_method[case.split(":")[0]])):   # n_fits per method, split over its cases
            n, d = SHAPES[rng.integers(len(SHAPES))]
            d = 2 if case.startswith("amortized") else d                  # the VAE is built for 2-D data
            x = shape_data(random_data(rng, n, d))
            try:
                result = jaxvi.infer(model, method, x, key=jax.random.key(i), progress=False)
                outcome = "finite" if _finite(result) else "silent"
                if outcome == "silent":
                    examples.setdefault("silent", f"non-finite result for data of shape {x.shape}")
            except (ValueError, FloatingPointError) as err:
                outcome = "clear error" if not hasattr(err, "result") or _finite(err.result) else "bad err.result"
                examples.setdefault(type(err).__name__ if outcome == "clear error" else outcome, str(err)[:200])
            except Exception as err:  # noqa: BLE001 - counting what should never happen
                outcome = "exception"
                examples.setdefault("exception", "".join(traceback.format_exception_only(err))[:300])
            counts[outcome] += 1
        other = {kind: counts[kind] for kind in ("silent", "bad err.result", "exception")}
        outcomes[case] = {"finite": counts["finite"], "clear error": counts["clear error"], "other": sum(other.values()),
                          **other, "seconds": time.perf_counter() - started, "examples": examples}
        print(f"  {case}: {dict(counts)}", flush=True)
    return outcomes


def _finite(result) -> bool:
    """Every parameter, objective and trace value of a result is finite."""
    import jax

    leaves = jax.tree_util.tree_leaves((result.params, result.objective, result.trace, result.guide_params))
    return all(np.all(np.isfinite(np.asarray(a))) for a in leaves)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fits", type=int, default=FITS, help="fits per method (EM, SVI, amortized)")
    parser.add_argument("--quick", action="store_true", help="20 fits per method")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    if args.quick and args.fits == FITS:
        args.fits = 20
    import jax

    outcomes = soak(args.fits)
    other = sum(o["other"] for o in outcomes.values())
    lines = [f"# Soak: {args.fits} random small fits per method (EM, SVI, amortized), split over its cases", f"machine: {machine(jax)}; jax {jax.__version__}", "",
             "| case | finite | clear error | other: silent | bad err.result | exception | seconds |",
             "|---|---|---|---|---|---|---|"]
    for case, o in outcomes.items():
        lines.append(f"| {case} | {o['finite']} | {o['clear error']} | {o['silent']} | {o['bad err.result']} | "
                     f"{o['exception']} | {o['seconds']:.0f} |")
    lines += ["", f"target (no fit ends any other way): {'MET' if other == 0 else 'NOT MET'} ({other} other)", "",
              "An example message of each kind:", ""]
    for case, o in outcomes.items():
        for kind, message in o["examples"].items():
            lines.append(f"- {case}, {kind}: {message}")
    summary = {"other": other, "fits": sum(o["finite"] + o["clear error"] + o["other"] for o in outcomes.values())}
    write(args, "\n".join(lines), {"machine": machine(jax), "jax": jax.__version__, "summary": summary}, outcomes)


if __name__ == "__main__":
    main()
