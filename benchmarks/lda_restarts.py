"""LDA's CAVI restarts: vmapped side by side, or one after another in one compiled program (``lax.map``).

``jaxvi.CAVI(n_init=R)`` fits R restarts of LDA (``jaxvi.models.lda``) on a synthetic corpus drawn from LDA,
with ``restarts="vmap"`` and ``restarts="sequence"`` (what ``restarts="auto"`` picks for a model with local
exponential-family factors); the same corpus, keys and iterations. Every document's q is swept until it
converges, in while loops and branches: vmapped restarts run them in lockstep, and both sides of every branch.
Each setting runs in a fresh process; the first call's compile time is measured directly, the run time is the
faster of two later calls.

Usage:
  python benchmarks/lda_restarts.py --json benchmarks/results/lda_restarts_cpu.json \\
      --markdown benchmarks/results/lda_restarts_cpu.md
  python benchmarks/lda_restarts.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, parse, run_child, spawn, timed, write  # noqa: E402

DOCS, VOCABULARY, TOPICS, WORDS, ITERS, RESTARTS = 2_000, 2_000, 20, 100, 10, 2
QUICK = {"docs": 300, "vocabulary": 300, "iters": 3}


def corpus(args) -> np.ndarray:
    """``--docs`` documents of about ``WORDS`` tokens drawn from LDA, counts (N, V) float32."""
    rng = np.random.default_rng(0)
    topics = rng.dirichlet(np.full(args.vocabulary, 0.05), TOPICS)
    proportions = rng.dirichlet(np.full(TOPICS, 0.3), args.docs)
    return np.stack([rng.multinomial(WORDS, p @ topics) for p in proportions]).astype(np.float32)


def fit(args) -> dict:
    import jax

    import jaxvi

    docs = jaxvi.models.bag_of_words(corpus(args))
    model = jaxvi.models.lda(docs, TOPICS, args.vocabulary)
    method = jaxvi.CAVI(max_iter=args.iters, tol=0.0, n_init=args.restarts, restarts=args.how)
    timing = timed(lambda: jaxvi.infer(model, method, docs, key=jax.random.key(0), progress=False).objective)
    return {"total_s": timing.first_s, "compile_s": timing.compile_s, "run_s": timing.run_s,
            "objective": float(timing.out)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=DOCS)
    parser.add_argument("--vocabulary", type=int, default=VOCABULARY)
    parser.add_argument("--iters", type=int, default=ITERS)
    parser.add_argument("--restarts", type=int, default=RESTARTS)
    parser.add_argument("--how", choices=("vmap", "sequence"), help=argparse.SUPPRESS)
    args = parse(parser, QUICK, {"fit": fit})
    if args.child:
        return run_child(fit, args)
    import jax

    sizes = ["--docs", str(args.docs), "--vocabulary", str(args.vocabulary), "--iters", str(args.iters),
             "--restarts", str(args.restarts)]
    rows = {how: spawn(__file__, ["--child", "fit", "--how", how, *sizes], args.child_timeout)
            for how in ("vmap", "sequence")}
    lines = [f"# LDA by CAVI, {args.restarts} restarts vmapped or in sequence: {args.docs} documents of about {WORDS} "
             f"tokens, V = {args.vocabulary}, K = {TOPICS}, {args.iters} iterations",
             f"machine: {machine(jax)}; jax {jax.__version__}", "",
             "| restarts | compile s | run s | total s (first call) | bound | peak RSS MB |", "|---|---|---|---|---|---|"]
    for how, r in rows.items():
        lines.append(f"| {how} | {r['compile_s']:.2f} | {r['run_s']:.2f} | {r['total_s']:.2f} | {r['objective']:.2f} "
                     f"| {r['peak_rss_mb']:.0f} |" if "error" not in r else f"| {how} | {r['error']} | | | | |")
    summary = {}
    if not any("error" in r for r in rows.values()):
        vmap, sequence = rows["vmap"], rows["sequence"]
        summary = {"run_speedup": vmap["run_s"] / sequence["run_s"],
                   "total_speedup": vmap["total_s"] / sequence["total_s"],
                   "bound_rel_diff": abs(vmap["objective"] - sequence["objective"]) / abs(sequence["objective"])}
        lines += ["", f"In sequence: {summary['run_speedup']:.2f}x the vmapped restarts' speed compiled, "
                      f"{summary['total_speedup']:.2f}x including compile; the bounds differ by "
                      f"{summary['bound_rel_diff']:.1e} of their size."]
    write(args, "\n".join(lines), {"machine": machine(jax), "jax": jax.__version__, "summary": summary}, rows)


if __name__ == "__main__":
    main()
