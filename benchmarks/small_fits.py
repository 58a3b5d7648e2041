"""Small fits, where compiling dominates: XLA's cheapest code against its full optimisation, the same fit.

jaxvi compiles a fit's start, loop, final evaluation and ``Result.posterior`` for XLA's cheapest code
(``jaxvi.run.compiled.CHEAP_CODE``) when the bytes they touch are small (``CHEAP_PASS_BYTES``, ``CHEAP_RUN_BYTES``,
``START_PASSES``). Each fit here runs twice in fresh processes: with jaxvi's defaults ("cheap", as a user gets it)
and as before that rule ("optimised": the start, the loop and ``Result.posterior`` at XLA's full optimisation; the
final evaluation of small data was cheap before too; CAVI's conjugacy checks are read by its start). The fits of
large kernels (EM's and CAVI's mixtures) take their optimised code in both modes where XLA has its older emitters
(``jaxvi.compiler_options``): their "cheap" rows are that code, save ``Result.posterior``'s. Printed:
compile time (JAX's compilation events), the first call (compile included), a repeat (the compiled run), and the
objective, which must agree.

Usage: python benchmarks/small_fits.py [--repeats 3] [--json F] [--markdown F]
"""
from __future__ import annotations

import argparse
import statistics
import sys

from _common import machine, parse, run_child, spawn, timed, write

FITS = {
    "EM, Gaussian mixture, wine 178 x 13, K=3, n_init=4": "em_gmm",
    "EM, Gaussian HMM, 5 x 40 steps x 2, K=3": "em_hmm",
    "SVI, logistic regression, 200 x 5, 500 steps": "svi_logreg",
    "CAVI, Bayesian mixture, wine 178 x 2, K=6": "cavi_bgmm",
}


def _fit(name: str):
    """A function running the fit ``name`` (a ``jaxvi.infer`` call and its posterior), returning its objective."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from sklearn.datasets import load_wine

    import jaxvi

    wine = load_wine().data
    wine = ((wine - wine.mean(0)) / wine.std(0)).astype(np.float32)
    key = jax.random.key(0)
    if name == "em_gmm":
        gm = jaxvi.models.gaussian_mixture(3)
        method = jaxvi.EM(m_step=gm.m_step, n_init=4, max_iter=100, tol=1e-4)
        return lambda: _objective(jaxvi.infer(gm.model, method, wine, key=key, progress=False), wine)
    if name == "em_hmm":
        rng = np.random.default_rng(0)
        x = np.concatenate([rng.normal(size=(20, 2)) - 2, rng.normal(size=(20, 2)) + 2] * 5).astype(np.float32)
        data = jaxvi.Sequences.from_concatenated(x, np.full(5, 40))
        hmm = jaxvi.models.gaussian_hmm(3)
        method = jaxvi.EM(m_step=hmm.m_step, max_iter=50, tol=1e-4)
        return lambda: _objective(jaxvi.infer(hmm.model, method, data, key=key, progress=False), data)
    if name == "svi_logreg":
        rng = np.random.default_rng(0)
        features = rng.normal(size=(200, 5)).astype(np.float32)
        labels = (features @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + rng.logistic(size=200) > 0).astype(np.float32)

        def log_joint(params, z, datum):
            x, y = datum
            logit = x @ z["w"]
            return y * logit - jnp.logaddexp(0.0, logit)

        latent = jaxvi.Global({"w": jaxvi.Real((5,))},
                              log_prior=lambda params, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["w"])))
        model = jaxvi.Model(log_joint, latent, lambda key, data: {})
        method = jaxvi.SVI(num_steps=500)
        return lambda: _objective(jaxvi.infer(model, method, (features, labels), key=key, progress=False), None)
    if name == "cavi_bgmm":
        x = (wine @ np.linalg.svd(wine - wine.mean(0), full_matrices=False)[2][:2].T).astype(np.float32)
        bayes = jaxvi.models.bayesian_gaussian_mixture(x, 6, "full")
        method = jaxvi.CAVI(max_iter=100, tol=1e-4)
        return lambda: _objective(jaxvi.infer(bayes, method, x, key=key, progress=False), None)
    raise ValueError(name)


def _objective(result, data):
    """The fit's objective, after its posterior (of ``data``, for EM) is computed too."""
    import jax

    jax.block_until_ready(result.posterior(data) if data is not None else result.posterior())
    return result.objective


def child(args) -> dict:
    import jax

    from jaxvi.run import compiled

    if args.mode == "optimised":  # as before the rule: full optimisation but for the final evaluation
        compiled.CHEAP_RUN_BYTES = -1
        compiled.run_once_options = lambda *trees, passes=1: None
    timing = timed(_fit(args.fit), repeats=1)
    return {"compile_s": timing.compile_s, "first_s": timing.first_s, "run_s": timing.run_s,
            "objective": float(timing.out), "machine": machine(jax), "jax": jax.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per fit and mode")
    parser.add_argument("--fit", choices=sorted(FITS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["cheap", "optimised"], help=argparse.SUPPRESS)
    args = parse(parser, {"repeats": 1}, {"fit": child})
    if args.child:
        return run_child(child, args)
    rows, meta = {}, {}
    for label, fit in FITS.items():
        for repeat in range(args.repeats):  # the modes interleaved: the machine's noise falls on both
            for mode in ("optimised", "cheap"):
                out = spawn(__file__, ["--child", "fit", "--fit", fit, "--mode", mode], args.child_timeout)
                rows.setdefault(f"{label} | {mode}", []).append(out)
                meta.update({k: out[k] for k in ("machine", "jax") if k in out})
    lines = ["# Small fits: XLA's cheapest code (jaxvi's default on small problems) against full optimisation "
             "(as before)",
             f"machine: {meta.get('machine')}; jax {meta.get('jax')}; median of {args.repeats} fresh processes "
             f"each, the modes interleaved", "",
             "| fit | code | compile s | first call s | repeat s | objective |", "|---|---|---|---|---|---|"]
    summary = {}
    for key, outs in rows.items():
        good = [o for o in outs if "error" not in o]
        if not good:
            lines.append(f"| {key} | {outs[0]['error']} | | | | |")
            continue
        med = {k: statistics.median(o[k] for o in good) for k in ("compile_s", "first_s", "run_s")}
        summary[key] = dict(med, objective=good[0]["objective"])
        lines.append(f"| {key} | {med['compile_s']:.2f} | {med['first_s']:.2f} | {med['run_s']:.3f} | "
                     f"{good[0]['objective']:.6g} |")
    lines.append("")
    for label in FITS:
        cheap, full = summary.get(f"{label} | cheap"), summary.get(f"{label} | optimised")
        if cheap and full:
            lines.append(f"- {label}: first call {full['first_s']:.2f} s -> {cheap['first_s']:.2f} s "
                         f"({full['first_s'] / cheap['first_s']:.2f}x); objective rel. diff "
                         f"{abs(cheap['objective'] - full['objective']) / abs(full['objective']):.1e}")
    write(args, "\n".join(lines), meta, {"runs": rows, "summary": summary})


if __name__ == "__main__":
    sys.exit(main())
