"""k-means starts: jaxvi's greedy k-means++ seeds and k-means against scikit-learn's, same data.

Two tasks, each library in a fresh process (jaxvi's compile time cold, measured from JAX's compilation events):
- ``seeds``: greedy k-means++ seeds (2 + floor(log K) candidates a step: ``jaxvi.kmeans.kmeans_plusplus`` against
  ``sklearn.cluster.kmeans_plusplus``) of N x D data drawn about K centers; the run time is the faster of the repeats,
  and the seeds' potential (the inertia they leave, sum of squared distances to the nearest seed) is the mean over
  ``--keys`` seeds (with its standard error), so that the draws are seen to be as good as scikit-learn's.
- ``kmeans10``: k-means, the best of 10 runs from such seeds (``jaxvi.kmeans.kmeans(n_init=10)``, a Gaussian HMM's and
  a variational HMM's start, against ``sklearn.cluster.KMeans(n_init=10)``, hmmlearn's start), on the steps of a
  Gaussian HMM's data, 200 x 1,000 steps x 4 (``benchmarks/hmm_em.py``'s), K = 8; its inertia.

Usage: python benchmarks/kmeans_starts.py [--quick] [--json F] [--markdown F]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import CompileClock, machine, parse, run_child, spawn, write

SEEDS_SIZE = (200_000, 16, 16)  # N, D, K
QUICK = {"n": 20_000, "keys": 3}


def blobs(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """N points about K centers drawn N(0, 3^2) in D dimensions, unit spread (float32)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 3, (k, d))[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def hmm_steps(n: int) -> np.ndarray:
    """The steps of hmm_em.py's data (200 sequences of 1,000; the first n of them), flattened: n x 4 (float32)."""
    import hmm_em

    return hmm_em.simulate(200, 1000).reshape(-1, 4)[:n]


def _potential(x: np.ndarray, centers: np.ndarray) -> float:
    """The inertia ``centers`` leave, in float64."""
    x64, c64 = x.astype(np.float64), np.asarray(centers, np.float64)
    return float(np.sum(np.min(np.sum(x64**2, 1)[:, None] - 2 * x64 @ c64.T + np.sum(c64**2, 1), axis=1)))


def _jaxvi(fn, x: np.ndarray, keys: int) -> dict:
    import jax

    data = jax.device_put(x)
    t0 = time.perf_counter()
    with CompileClock() as clock:
        first_centers = jax.block_until_ready(fn(jax.random.key(0), data))
    first = time.perf_counter() - t0
    runs, potentials = [], [_potential(x, first_centers)]
    for seed in range(1, keys):
        t0 = time.perf_counter()
        centers = jax.block_until_ready(fn(jax.random.key(seed), data))
        runs.append(time.perf_counter() - t0)
        potentials.append(_potential(x, centers))
    return {"compile_s": clock.seconds, "first_s": first, "run_s": min(runs), **_mean(potentials)}


def _sklearn(fn, x: np.ndarray, keys: int) -> dict:
    runs, potentials = [], []
    for seed in range(keys):
        t0 = time.perf_counter()
        centers = fn(seed, x)
        runs.append(time.perf_counter() - t0)
        potentials.append(_potential(x, centers))
    return {"compile_s": 0.0, "first_s": runs[0], "run_s": min(runs), **_mean(potentials)}


def _mean(potentials: list) -> dict:
    """The mean inertia over the keys and its standard error."""
    return {"inertia": float(np.mean(potentials)), "inertia_se": float(np.std(potentials) / np.sqrt(len(potentials)))}


def jaxvi_seeds(args) -> dict:
    import jax

    from jaxvi.kmeans import kmeans_plusplus

    n, d, k = args.n, args.d, args.k
    fn = jax.jit(lambda key, data: kmeans_plusplus(key, data, k))
    return _jaxvi(fn, blobs(n, d, k), args.keys)


def sklearn_seeds(args) -> dict:
    from sklearn.cluster import kmeans_plusplus

    return _sklearn(lambda seed, x: kmeans_plusplus(x, args.k, random_state=seed)[0], blobs(args.n, args.d, args.k),
                    args.keys)


def jaxvi_kmeans10(args) -> dict:
    import jax

    from jaxvi.kmeans import kmeans

    fn = jax.jit(lambda key, data: kmeans(key, data, 8, n_init=10))
    return _jaxvi(fn, hmm_steps(args.n), args.keys)


def sklearn_kmeans10(args) -> dict:
    from sklearn.cluster import KMeans

    return _sklearn(lambda seed, x: KMeans(8, n_init=10, random_state=seed).fit(x).cluster_centers_,
                    hmm_steps(args.n), args.keys)


TASKS = {"jaxvi_seeds": jaxvi_seeds, "sklearn_seeds": sklearn_seeds, "jaxvi_kmeans10": jaxvi_kmeans10,
         "sklearn_kmeans10": sklearn_kmeans10}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=SEEDS_SIZE[0], help="rows of either task's data")
    parser.add_argument("--d", type=int, default=SEEDS_SIZE[1])
    parser.add_argument("--k", type=int, default=SEEDS_SIZE[2])
    parser.add_argument("--keys", type=int, default=20, help="keys (seeds) per library: the first call and repeats")
    args = parse(parser, QUICK, TASKS)
    if args.child:
        run_child(TASKS[args.child], args)
        return
    import jax
    import sklearn

    common = ["--n", str(args.n), "--d", str(args.d), "--k", str(args.k), "--keys", str(args.keys)]
    rows = {task: spawn(__file__, ["--child", task, *common], args.child_timeout) for task in TASKS}
    lines = [f"# k-means starts: jaxvi against scikit-learn, {args.keys} keys (seeds) each",
             f"machine: {machine(jax)}; jax {jax.__version__}; scikit-learn {sklearn.__version__}; the same float32 "
             "data for both", "",
             "| task | library | compile s | first call s | run s | mean inertia (standard error) |",
             "|---|---|---|---|---|---|"]
    what = {"seeds": f"greedy k-means++ seeds, {args.n:,} x {args.d}, K = {args.k}",
            "kmeans10": f"k-means, best of 10, Gaussian HMM steps {args.n:,} x 4, K = 8"}
    summary = {}
    for task, label in what.items():
        ours, theirs = rows[f"jaxvi_{task}"], rows[f"sklearn_{task}"]
        for library, r in (("jaxvi", ours), ("scikit-learn", theirs)):
            if "error" in r:
                lines.append(f"| {label} | {library} | {r['error']} |")
                continue
            lines.append(f"| {label} | {library} | {r['compile_s']:.2f} | {r['first_s']:.3f} | {r['run_s']:.3f} | "
                         f"{r['inertia']:.6g} ({r['inertia_se']:.2g}) |")
        if "error" not in ours and "error" not in theirs:
            summary[task] = {"speedup_compiled": theirs["run_s"] / ours["run_s"],
                             "speedup_with_compile": theirs["first_s"] / ours["first_s"],
                             "inertia_ratio": ours["inertia"] / theirs["inertia"]}
            s = summary[task]
            lines.append(f"{label}: jaxvi {s['speedup_compiled']:.2f}x scikit-learn compiled, "
                         f"{s['speedup_with_compile']:.2f}x including compile (first call); mean inertia "
                         f"{s['inertia_ratio']:.4f} of scikit-learn's")
    write(args, "\n".join(lines), {"machine": machine(jax), "jax": jax.__version__, "summary": summary}, rows)


if __name__ == "__main__":
    main()
