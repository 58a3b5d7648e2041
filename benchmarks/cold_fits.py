"""A fit's first call in a fresh process (what a user waits for): jaxvi's code of two checkouts, alternated.

Each fit runs in a fresh interpreter with one checkout's ``jaxvi`` first on its path (``--trees OLD NEW``, two
folders holding a ``jaxvi`` package; default: this checkout alone), the checkouts alternated ``--repeats`` times, so
that both meet the machine in the same state. Printed per fit and checkout: the median first call (compile included),
compile time (JAX's compilation events, ``_common.CompileClock``), a repeat (the compiled run), and the objective,
which must agree.

Usage: python benchmarks/cold_fits.py [--trees OLD NEW] [--repeats 3] [--fits bgmm,em_gmm] [--json F] [--markdown F]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from _common import machine, parse, run_child, spawn, timed, write

FITS = {
    "CAVI, Bayesian mixture, 2,000 x 16, K=16, 20 iterations": "bgmm",
    "CAVI, variational Gaussian HMM, 50 x 40 steps x 3, K=4, 10 iterations": "vhmm",
    "CAVI, LDA, 500 documents, V=300, K=8, 10 iterations": "lda",
    "CAVI, Bayesian mixture, wine 178 x 2, K=6 (and its posterior)": "cavi_bgmm",
    "EM, Gaussian mixture, wine 178 x 13, K=3, n_init=4 (and its posterior)": "em_gmm",
}
SMALL_FITS = ("cavi_bgmm", "em_gmm")  # small_fits.py's


def _fit(name: str):
    """A function running the fit ``name`` (a ``jaxvi.infer`` call), returning its objective."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxvi

    if name in SMALL_FITS:
        from small_fits import _fit as small_fit

        return small_fit(name)
    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    if name == "bgmm":
        x = (rng.normal(size=(2000, 16)) + rng.integers(0, 4, (2000, 1)) * 3).astype(np.float32)
        model, data, method = jaxvi.models.bayesian_gaussian_mixture(x, 16), jnp.asarray(x), jaxvi.CAVI(max_iter=20)
    elif name == "vhmm":
        x = rng.normal(size=(50, 40, 3)).astype(np.float32)
        model, data, method = jaxvi.models.variational_gaussian_hmm(4, 3), jnp.asarray(x), jaxvi.CAVI(max_iter=10)
    elif name == "lda":
        data = jaxvi.models.bag_of_words(rng.poisson(0.3, (500, 300)))
        model, method = jaxvi.models.lda(data, 8, 300), jaxvi.CAVI(max_iter=10)
    else:
        raise ValueError(name)
    return lambda: jax.block_until_ready(jaxvi.infer(model, method, data, key=key, progress=False).objective)


def _commit(tree: str) -> str:
    try:
        return subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def child(args) -> dict:
    import jax

    import jaxvi

    timing = timed(_fit(args.fit), repeats=1)
    return {"compile_s": timing.compile_s, "first_s": timing.first_s, "run_s": timing.run_s,
            "objective": float(timing.out), "machine": machine(jax), "jaxvi": os.path.dirname(jaxvi.__file__)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", default=[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
                        help="checkouts whose jaxvi is timed (one or two folders)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per fit and checkout")
    parser.add_argument("--fits", default=",".join(FITS.values()),
                        help=f"which fits, comma-separated (default: all: {','.join(FITS.values())})")
    parser.add_argument("--fit", choices=sorted(FITS.values()), help=argparse.SUPPRESS)
    args = parse(parser, {"repeats": 1}, {"fit": child})
    if args.child:
        return run_child(child, args)
    chosen = args.fits.split(",")
    if not set(chosen) <= set(FITS.values()):
        parser.error(f"--fits: expected names among {sorted(FITS.values())}, got {args.fits!r}")
    fits = {title: fit for title, fit in FITS.items() if fit in chosen}
    trees = [os.path.abspath(t) for t in args.trees]
    runs = {(fit, tree): [] for fit in fits.values() for tree in trees}
    path = os.environ.get("PYTHONPATH", "")
    for _ in range(args.repeats):
        for fit in fits.values():
            for tree in trees:  # alternated: both checkouts meet the machine in the same state
                os.environ["PYTHONPATH"] = os.pathsep.join([tree, path])  # the children import this tree's jaxvi
                runs[fit, tree].append(spawn(__file__, ["--child", "fit", "--fit", fit], args.child_timeout))
    os.environ["PYTHONPATH"] = path
    rows, lines = {}, []
    where = next((r["machine"] for rs in runs.values() for r in rs if "machine" in r), "?")
    labels = {tree: f"{os.path.basename(tree)} ({_commit(tree)})" for tree in trees}
    lines += [f"# Cold fits: first call in a fresh process, median of {args.repeats}, checkouts alternated",
              f"machine: {where}", "", "| fit | jaxvi | first call s | compile s | repeat s | objective |",
              "|---|---|---|---|---|---|"]
    for title, fit in fits.items():
        for tree in trees:
            good = [r for r in runs[fit, tree] if "error" not in r]
            if not good:
                lines.append(f"| {title} | {labels[tree]} | failed: {runs[fit, tree][0]['error']} | | | |")
                continue
            row = {key: statistics.median(r[key] for r in good) for key in ("first_s", "compile_s", "run_s")}
            row["objective"] = good[0]["objective"]
            row["first_all"] = [r["first_s"] for r in good]
            rows[f"{fit}@{labels[tree]}"] = row
            each = ", ".join(f"{t:.1f}" for t in row["first_all"])
            lines.append(f"| {title} | {labels[tree]} | {row['first_s']:.2f} ({each}) | {row['compile_s']:.2f} | "
                         f"{row['run_s']:.3f} | {row['objective']:.7g} |")
    write(args, "\n".join(lines), {"trees": labels, "repeats": args.repeats}, rows)


if __name__ == "__main__":
    sys.exit(main())
