"""How cost grows with the work: jaxvi and each peer at growing sizes, time against size on log-log axes.

Families (each point runs every library in a fresh process, on the same data from the same start):
  gmm      full-covariance GMM by EM (D = K = 8, 10 iterations, tol 0) against scikit-learn, over N;
  hmm_t    Gaussian HMM by EM (K = 8, D = 4, 10 iterations) against hmmlearn, 10 sequences, over their length T;
  hmm_s    the same HMM over the number of sequences of length 1,000;
  svi      Bayesian logistic regression by SVI (D = 10, minibatches of 256, 1,000 Adam steps) against NumPyro
           (a subsampled plate), over N: a minibatch step is O(B), so the time should not grow with N;
  vae      the digits VAE of vae_digits.py against PyTorch, over the number of training steps.
For each point: the first call's wall time (compile included), the compile time (JAX's compilation events,
measured directly) and, for jaxvi, the compiled run (a second call). The report marks where jaxvi overtakes
each peer including compile (from that size on it stays ahead) and, for the GMM, the fraction of the
machine's matrix-multiply throughput its compiled EM reaches: an iteration does about 4 N K D^2 flops (the
whitening products of the E-step and the weighted scatter matrices of the M-step), set against a float32
matmul of the E-step's shape timed in the same run.

Usage:
  python benchmarks/scaling.py --json benchmarks/results/scaling_cpu.json \\
      --markdown benchmarks/results/scaling_cpu.md --plot benchmarks/results/scaling_cpu.png
  python benchmarks/scaling.py --quick --families gmm svi
(``jaxvi bench --scaling`` runs this script.)
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, parse, run_child, spawn, timed, write  # noqa: E402

GMM_D, GMM_K, GMM_ITERS = 8, 8, 10
HMM_ITERS, HMM_SEQUENCES, HMM_LENGTH = 10, 10, 1_000
SVI_D, SVI_BATCH, SVI_STEPS, SVI_LR = 10, 256, 1_000, 1e-2
# family: (what grows, the peer, the modules it needs, sizes, quick sizes)
FAMILIES = {
    "gmm": ("N", "scikit-learn", ("sklearn",), (10**3, 10**4, 10**5, 10**6, 10**7), (10**3, 10**4)),
    "hmm_t": ("T", "hmmlearn", ("hmmlearn",), (100, 1_000, 10_000, 100_000), (100, 1_000)),
    "hmm_s": ("sequences", "hmmlearn", ("hmmlearn",), (10, 100, 1_000), (2, 10)),
    "svi": ("N", "NumPyro", ("numpyro",), (10**3, 10**4, 10**5, 10**6), (10**3, 10**4)),
    "vae": ("steps", "PyTorch", ("torch", "sklearn"), (100, 300, 1_000, 3_000, 10_000), (20, 100)),
}


# --- GMM ----------------------------------------------------------------------------------------------

def gmm_data(n: int) -> tuple[np.ndarray, tuple]:
    """``n`` points from GMM_K full-covariance clusters, and the shared start: GMM_K random points as means,
    the data covariance in every component, equal weights."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, (GMM_K, GMM_D))
    factors = rng.normal(0, 0.5, (GMM_K, GMM_D, GMM_D)) / np.sqrt(GMM_D) + np.eye(GMM_D)
    labels = rng.integers(0, GMM_K, n)
    x = rng.standard_normal((n, GMM_D), np.float32)
    for k in range(GMM_K):  # per cluster, never an (N, D, D) array
        x[labels == k] = means[k] + x[labels == k] @ factors[k]
    start_means = x[rng.choice(n, GMM_K, replace=False)].astype(np.float64)
    cov = np.cov(x.T.astype(np.float64)) + 1e-6 * np.eye(GMM_D)
    prec_chol = np.broadcast_to(np.linalg.inv(np.linalg.cholesky(cov)).T, (GMM_K, GMM_D, GMM_D)).copy()
    return x, (np.full(GMM_K, 1.0 / GMM_K), start_means, prec_chol)


def gmm_jaxvi(n: int) -> dict:
    import jax
    import jax.numpy as jnp

    import jaxvi
    from jaxvi.models import GMMParams, gaussian_mixture

    x, (weights, means, prec_chol) = gmm_data(n)
    gm = gaussian_mixture(GMM_K, covariance="full")
    start = GMMParams(*(jnp.asarray(a, jnp.float32) for a in (np.log(weights), means, prec_chol)))
    method = jaxvi.EM(max_iter=GMM_ITERS, tol=0.0, m_step=gm.m_step)
    xj = jax.device_put(x)
    first, run, compile_s, result = timed(lambda: jaxvi.infer(gm.model, method, xj, key=jax.random.key(0),
                                                              progress=False, init_params=start), repeats=1)
    flops = 4.0 * n * GMM_K * GMM_D**2 * GMM_ITERS
    return {"total_s": first, "run_s": run, "compile_s": compile_s, "gflops": flops / run / 1e9,
            "log_likelihood": float(result.objective) / n}


def gmm_sklearn(n: int) -> dict:
    from sklearn.mixture import GaussianMixture

    x, (weights, means, prec_chol) = gmm_data(n)
    gm = GaussianMixture(GMM_K, covariance_type="full", max_iter=GMM_ITERS, tol=0.0, weights_init=weights,
                         means_init=means, precisions_init=np.einsum("kij,klj->kil", prec_chol, prec_chol))
    t0 = time.perf_counter()
    gm.fit(x)
    total = time.perf_counter() - t0
    return {"total_s": total, "run_s": total, "compile_s": 0.0, "log_likelihood": float(gm.score(x))}


def matmul_gflops(n: int) -> dict:
    """The machine's float32 matmul throughput at the E-step's shape, (n, D) @ (D, K D): the roofline the GMM
    EM's GEMMs can reach here."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, GMM_D))
    b = jax.random.normal(jax.random.key(1), (GMM_D, GMM_K * GMM_D))
    product = jax.jit(lambda a, b: jnp.sum(a @ b))  # the sum keeps the (n, K D) product out of memory traffic
    _, run, _, _ = timed(lambda: product(a, b), repeats=5)
    return {"gflops": 2.0 * n * GMM_D * GMM_K * GMM_D / run / 1e9}


# --- HMM ----------------------------------------------------------------------------------------------

def hmm_fit(library: str, sequences: int, length: int) -> dict:
    import hmm_em

    x = hmm_em.simulate(sequences, length)
    out = hmm_em.jaxvi_em(x, False, HMM_ITERS) if library == "jaxvi" else hmm_em.hmmlearn_em(x, HMM_ITERS)
    return {k: out[k] for k in ("total_s", "run_s", "compile_s", "log_likelihood")}


# --- SVI ----------------------------------------------------------------------------------------------

def svi_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, SVI_D), np.float32)
    w = rng.normal(0, 1, SVI_D)
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ w))).astype(np.float32)
    return x, y


def svi_jaxvi(n: int) -> dict:
    import svi_logreg

    jax, jaxvi, model, method = svi_logreg.jaxvi_setup(SVI_STEPS, SVI_D, SVI_BATCH, SVI_LR)
    x, y = svi_data(n)
    data = jax.device_put({"x": x, "y": y})
    first, run, compile_s, _ = timed(lambda: jaxvi.infer(model, method, data, key=jax.random.key(0), progress=False),
                                     repeats=1)
    return {"total_s": first, "run_s": run, "compile_s": compile_s}


def svi_numpyro(n: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    x, y = (jax.device_put(a) for a in svi_data(n))

    def model(x, y):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(SVI_D), 1.0).to_event(1))
        with numpyro.plate("data", n, subsample_size=SVI_BATCH) as index:
            numpyro.sample("y", dist.Bernoulli(logits=x[index] @ w), obs=y[index])

    svi = SVI(model, AutoNormal(model), optax.adam(SVI_LR), Trace_ELBO())
    fit = lambda: svi.run(jax.random.PRNGKey(0), SVI_STEPS, x, y, progress_bar=False).params  # noqa: E731
    first, _, compile_s, _ = timed(fit, repeats=0)  # svi.run compiles on every call: its first call is its cost
    # its compiled run: the same steps as one jitted loop of svi.update, timed after compiling it
    loop = jax.jit(lambda state: jax.lax.fori_loop(0, SVI_STEPS, lambda i, s: svi.update(s, x, y)[0], state))
    state = svi.init(jax.random.PRNGKey(0), x, y)
    run = timed(lambda: loop(state), repeats=1).run_s
    return {"total_s": first, "run_s": run, "compile_s": compile_s}


# --- VAE ----------------------------------------------------------------------------------------------

def vae_fit(library: str, steps: int) -> dict:
    import vae_digits

    out = vae_digits.jaxvi_run(steps, 10) if library == "jaxvi" else vae_digits.torch_run(steps, 10)
    return {k: out[k] for k in ("total_s", "run_s", "compile_s", "train_elbo")}


TASKS = {
    "gmm-jaxvi": lambda a: gmm_jaxvi(a.child_size), "gmm-peer": lambda a: gmm_sklearn(a.child_size),
    "gmm-matmul": lambda a: matmul_gflops(a.child_size),
    "hmm_t-jaxvi": lambda a: hmm_fit("jaxvi", HMM_SEQUENCES, a.child_size),
    "hmm_t-peer": lambda a: hmm_fit("hmmlearn", HMM_SEQUENCES, a.child_size),
    "hmm_s-jaxvi": lambda a: hmm_fit("jaxvi", a.child_size, HMM_LENGTH),
    "hmm_s-peer": lambda a: hmm_fit("hmmlearn", a.child_size, HMM_LENGTH),
    "svi-jaxvi": lambda a: svi_jaxvi(a.child_size), "svi-peer": lambda a: svi_numpyro(a.child_size),
    "vae-jaxvi": lambda a: vae_fit("jaxvi", a.child_size), "vae-peer": lambda a: vae_fit("torch", a.child_size),
}


# --- the report ---------------------------------------------------------------------------------------

def overtakes(sizes, ours, theirs):
    """The smallest size from which jaxvi's time stays below the peer's at every larger size measured, or None.

    >>> overtakes([1, 10, 100], [5.0, 3.0, 2.0], [1.0, 4.0, 9.0])
    10
    """
    found = None
    for size, mine, peer in zip(sizes, ours, theirs):
        if mine < peer:
            found = size if found is None else found
        else:
            found = None
    return found


def family_report(family: str, rows: dict, sizes, matmul: dict | None) -> tuple[list[str], dict]:
    grows, peer = FAMILIES[family][:2]
    lines = [f"## {family}: {DESCRIPTIONS[family]}", "",
             f"| {grows} | jaxvi total s | jaxvi compile s | jaxvi run s | {peer} total s | {peer} / jaxvi "
             f"(including compile) | {peer} / jaxvi (compiled) |", "|---|---|---|---|---|---|---|"]
    good = []
    for size in sizes:
        ours, theirs = rows[f"{family} {size} jaxvi"], rows[f"{family} {size} peer"]
        if "error" in ours or "error" in theirs:
            lines.append(f"| {size:,} | {ours.get('error', '')} | | | {theirs.get('error', '')} | | |")
            continue
        good.append(size)
        lines.append(f"| {size:,} | {ours['total_s']:.2f} | {ours['compile_s']:.2f} | {ours['run_s']:.3f} | "
                     f"{theirs['total_s']:.2f} | {theirs['total_s'] / ours['total_s']:.2f}x | "
                     f"{theirs['run_s'] / ours['run_s']:.2f}x |")
    total = lambda who: [rows[f"{family} {s} {who}"]["total_s"] for s in good]  # noqa: E731
    crossing = overtakes(good, total("jaxvi"), total("peer"))
    summary = {"sizes": good, "jaxvi_total_s": total("jaxvi"), "peer_total_s": total("peer"),
               "jaxvi_compile_s": [rows[f"{family} {s} jaxvi"]["compile_s"] for s in good],
               "jaxvi_run_s": [rows[f"{family} {s} jaxvi"]["run_s"] for s in good], "overtakes_at": crossing}
    if good and "log_likelihood" in rows[f"{family} {good[0]} jaxvi"]:  # the same fit, from the same start
        summary["log_likelihood_rel_diff"] = [abs(rows[f"{family} {s} jaxvi"]["log_likelihood"] / rows[
            f"{family} {s} peer"]["log_likelihood"] - 1) for s in good]
        lines += ["", "log-likelihood relative difference, jaxvi against " + peer + ", by size: "
                  + ", ".join(f"{d:.1e}" for d in summary["log_likelihood_rel_diff"])]
    lines += ["", f"jaxvi overtakes {peer} including compile from {grows} = {crossing:,} on" if crossing is not None
              else f"jaxvi does not overtake {peer} including compile at the sizes measured"]
    compile_s = summary["jaxvi_compile_s"]
    if compile_s:
        lines.append(f"jaxvi's compile time from the smallest to the largest {grows}: {compile_s[0]:.2f} s to "
                     f"{compile_s[-1]:.2f} s ({compile_s[-1] / compile_s[0]:.2f}x)")
    if family == "gmm" and matmul and "gflops" in matmul and good:
        reached = [rows[f"gmm {s} jaxvi"]["gflops"] for s in good]
        summary["gflops"], summary["matmul_gflops"] = reached, matmul["gflops"]
        lines.append(f"physical limit: a float32 matmul of the E-step's shape runs at {matmul['gflops']:.1f} GFLOP/s "
                     f"here; jaxvi's compiled EM reaches {reached[-1]:.1f} GFLOP/s at N = {good[-1]:,} "
                     f"({reached[-1] / matmul['gflops']:.0%} of it; by N: "
                     + ", ".join(f"{g / matmul['gflops']:.0%}" for g in reached) + ")")
    return lines + [""], summary


DESCRIPTIONS = {
    "gmm": f"full-covariance GMM by EM, D = K = {GMM_D}, {GMM_ITERS} iterations",
    "hmm_t": f"Gaussian HMM by EM, K = 8, D = 4, {HMM_ITERS} iterations, {HMM_SEQUENCES} sequences of T steps",
    "hmm_s": f"Gaussian HMM by EM, K = 8, D = 4, {HMM_ITERS} iterations, sequences of {HMM_LENGTH:,} steps",
    "svi": f"logistic regression by SVI, D = {SVI_D}, minibatches of {SVI_BATCH}, {SVI_STEPS:,} Adam steps",
    "vae": "the digits VAE (vae_digits.py), training steps of batch 128",
}


def plot(path: str, summaries: dict, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (family, s) in zip(axes.flat, summaries.items()):
        grows, peer = FAMILIES[family][:2]
        ax.plot(s["sizes"], s["jaxvi_total_s"], "o-", label="jaxvi, compile included")
        ax.plot(s["sizes"], s["jaxvi_run_s"], "o:", label="jaxvi, compiled run")
        ax.plot(s["sizes"], s["peer_total_s"], "s--", label=peer)
        if s["overtakes_at"] is not None:
            ax.axvline(s["overtakes_at"], color="grey", linewidth=0.8)
            ax.annotate(f"jaxvi ahead from {s['overtakes_at']:,}", (s["overtakes_at"], ax.get_ylim()[1]),
                        fontsize=7, va="top", rotation=90, ha="right")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(grows)
        ax.set_ylabel("seconds")
        ax.set_title(DESCRIPTIONS[family], fontsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(summaries):]:
        ax.axis("off")
    fig.suptitle(f"time against size, log-log ({where})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--without", nargs="*", default=(), help="modules to treat as not installed")
    parser.add_argument("--plot", default=None, help="where to draw time against size (PNG)")
    parser.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    args = parse(parser, {}, TASKS)
    if args.child:
        return run_child(TASKS[args.child], args)
    import jax

    rows, lines, summaries, matmul = {}, [], {}, None
    for family in args.families:
        grows, peer, modules, sizes, quick_sizes = FAMILIES[family]
        missing = [m for m in modules if m in args.without or importlib.util.find_spec(m) is None]
        if missing:
            lines += [f"## {family}", f"skipped: its peer {peer} is not installed ({', '.join(missing)})", ""]
            continue
        sizes = quick_sizes if args.quick else sizes
        print(f"{family}: {DESCRIPTIONS[family]}, {grows} = {', '.join(f'{s:,}' for s in sizes)}", flush=True)
        for size in sizes:
            for who in ("jaxvi", "peer"):
                rows[f"{family} {size} {who}"] = spawn(__file__, ["--child", f"{family}-{who}", "--child-size",
                                                                  str(size)], args.child_timeout)
        if family == "gmm":
            matmul = spawn(__file__, ["--child", "gmm-matmul", "--child-size", str(min(sizes[-1], 10**6))],
                           args.child_timeout)
            rows["gmm matmul"] = matmul
        family_lines, summaries[family] = family_report(family, rows, sizes, matmul)
        lines += family_lines
    where = machine(jax)
    header = ["# How time grows with the work: jaxvi against each peer", f"machine: {where}; jax {jax.__version__}",
              "Each point: every library in a fresh process, same data, same start; total = the first call, "
              "compile included (jaxvi's compile measured from JAX's compilation events); run = a second call.", ""]
    if args.plot and summaries:
        plot(args.plot, summaries, where)
    write(args, "\n".join(header + lines), {"machine": where, "jax": jax.__version__, "quick": args.quick,
                                            "summary": summaries}, rows)


if __name__ == "__main__":
    main()
