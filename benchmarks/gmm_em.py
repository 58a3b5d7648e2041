"""Full-covariance GMM by EM: jaxvi against scikit-learn's GaussianMixture, same data, same init.

N=200,000, D=16, K=16, 20 iterations (tol=0, so both run exactly 20). Prints compile time (measured
directly, from JAX's compilation events), run time (the faster of two compiled repeats), the ratio and the final
log-likelihood of both; then n_init=8 restarts (one vmapped jaxvi
call against scikit-learn's sequential n_init=8). Peak memory is measured per fit in a fresh
subprocess (ru_maxrss), so the two libraries do not share a high-water mark; the --quick smoke run fits
in one process (a process start costs more than its fits) and reports no peak memory.

Usage: python benchmarks/gmm_em.py [--n 200000] [--json benchmarks/results/gmm_em.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_model, timed  # noqa: E402

N, D, K, ITERS, RESTARTS = 200_000, 16, 16, 20, 8


def make_data(n: int, seed: int = 0) -> np.ndarray:
    """K Gaussian clusters with random means (spread 3) and random full covariances, float32."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (K, D))
    factors = rng.normal(0, 0.5, (K, D, D)) / np.sqrt(D) + np.eye(D)
    labels = rng.integers(0, K, n)
    x = rng.normal(size=(n, D))
    for k in range(K):  # per cluster, so data generation never holds an (N, D, D) array
        x[labels == k] = means[k] + x[labels == k] @ factors[k]
    return x.astype(np.float32)


def initial_params(x: np.ndarray, seed: int):
    """Shared initial parameters: K random data points as means, the data covariance, equal weights."""
    rng = np.random.default_rng(seed)
    means = x[rng.choice(len(x), K, replace=False)].astype(np.float64)
    cov = np.cov(x.T.astype(np.float64)) + 1e-6 * np.eye(D)
    prec_chol = np.linalg.inv(np.linalg.cholesky(cov)).T  # upper triangular, P P^T = cov^-1
    return np.full(K, 1.0 / K), means, np.broadcast_to(prec_chol, (K, D, D)).copy()


def fit_jaxvi(x, seeds):
    import jax
    import jax.numpy as jnp
    import jaxvi
    from jaxvi.models import GMMParams, gaussian_mixture

    gm = gaussian_mixture(K, covariance="full")
    inits = [initial_params(x, s) for s in seeds]
    stacked = GMMParams(*(jnp.asarray(np.stack([p[i] for p in inits]), jnp.float32) for i in range(3)))
    stacked = stacked._replace(logits=jnp.log(stacked.logits))
    # restart r's key is split(key, n_init)[r] (key itself for one restart); its init gets that key's split[0]
    fit_keys = jax.random.split(jax.random.key(0), len(seeds)) if len(seeds) > 1 else jax.random.key(0)[None]
    restart_keys = jax.random.key_data(jax.vmap(lambda k: jax.random.split(k)[0])(fit_keys))

    def init(key, data):
        """Restart r (started from the r-th split of the fit's key) gets the r-th shared init."""
        r = jnp.argmax(jnp.all(restart_keys == jax.random.key_data(key), axis=1))
        return jax.tree_util.tree_map(lambda a: a[r], stacked)

    model = jaxvi.Model(gm.model.log_joint, gm.model.latent, init)
    method = jaxvi.EM(max_iter=ITERS, tol=0.0, n_init=len(seeds), m_step=gm.m_step)
    xj = jnp.asarray(x)
    first, run, compile_s, result = timed(lambda: jaxvi.infer(model, method, xj, key=jax.random.key(0),
                                                              progress=False))
    return {"total_s": first, "run_s": run, "compile_s": compile_s,
            "log_likelihood": float(result.objective) / len(x), "n_iter": int(result.n_iter)}


def fit_sklearn(x, seeds):
    from sklearn.mixture import GaussianMixture

    inits = [initial_params(x, s) for s in seeds]
    best, t0 = -np.inf, time.perf_counter()
    for weights, means, prec_chol in inits:  # scikit-learn's n_init is sequential too; explicit inits need a loop
        gm = GaussianMixture(K, covariance_type="full", max_iter=ITERS, tol=0.0, weights_init=weights,
                             means_init=means, precisions_init=np.einsum("kij,klj->kil", prec_chol, prec_chol))
        gm.fit(x)
        best = max(best, gm.score(x))
    return {"total_s": time.perf_counter() - t0, "log_likelihood": float(best), "n_iter": ITERS}


def one_fit(library: str, restarts: int, n: int, alone: bool = True) -> dict:
    """One library's fit; ``alone``: in a process of its own, whose high-water mark is the fit's peak memory."""
    import warnings

    warnings.filterwarnings("ignore")
    x = make_data(n)
    seeds = list(range(restarts))
    out = fit_jaxvi(x, seeds) if library == "jaxvi" else fit_sklearn(x, seeds)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if alone else None
    return out


def fit_in_a_process_of_its_own(library: str, restarts: int, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--n", str(n), "--child", library, str(restarts)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--quick", action="store_true", help="smoke run: N=2,000")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None, help="the report (default: the --json path with .md)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and args.n == N:
        args.n = 2_000
    if args.child:
        print(json.dumps(one_fit(args.child[0], int(args.child[1]), args.n)))
        return
    import jax
    import sklearn

    rows = {}
    for restarts in (1, RESTARTS):
        for library in ("jaxvi", "sklearn"):
            rows[(library, restarts)] = (one_fit(library, restarts, args.n, alone=False) if args.quick
                                         else fit_in_a_process_of_its_own(library, restarts, args.n))
    machine = f"{cpu_model()}, {os.cpu_count()} cores ({platform.machine()}), jax device: {jax.devices()[0].device_kind}"
    lines = [f"# GMM EM benchmark: N={args.n}, D={D}, K={K}, {ITERS} iterations, full covariance",
             f"machine: {machine}; jax {jax.__version__}; scikit-learn {sklearn.__version__}", "",
             "| restarts | library | compile s | run s | total s | log-lik / datum | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for (library, restarts), r in rows.items():
        lines.append(f"| {restarts} | {library} | {r.get('compile_s', 0):.2f} | {r.get('run_s', r['total_s']):.2f} | "
                     f"{r['total_s']:.2f} | {r['log_likelihood']:.6f} | "
                     f"{'-' if r['peak_rss_mb'] is None else format(r['peak_rss_mb'], '.0f')} |")
    lines.append("")
    summary = {}
    for restarts in (1, RESTARTS):
        j, s = rows[("jaxvi", restarts)], rows[("sklearn", restarts)]
        rel = abs(j["log_likelihood"] - s["log_likelihood"]) / abs(s["log_likelihood"])
        summary[f"n_init={restarts}"] = {"speedup_compiled": s["total_s"] / j["run_s"],
                                         "speedup_with_compile": s["total_s"] / j["total_s"],
                                         "log_likelihood_rel_diff": rel}
        lines.append(f"n_init={restarts}: speed-up {s['total_s'] / j['run_s']:.2f}x compiled, "
                     f"{s['total_s'] / j['total_s']:.2f}x including compile; log-lik rel. diff {rel:.2e}")
    text = "\n".join(lines)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "jax": jax.__version__, "sklearn": sklearn.__version__,
                       "n": args.n, "d": D, "k": K, "iterations": ITERS, "summary": summary,
                       "results": [{"library": l, "restarts": r, **v} for (l, r), v in rows.items()]}, f, indent=1)
    markdown = args.markdown or (args.json.replace(".json", ".md") if args.json else None)
    if markdown:
        with open(markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
