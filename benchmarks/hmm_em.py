"""Gaussian HMM by EM: jaxvi against hmmlearn's GaussianHMM, same data, same initial parameters.

Part 1: K=8 states, D=4, diagonal covariance, 200 sequences x 1,000 steps simulated from a known
HMM (float32), 10 EM iterations (tol=0 for jaxvi, tol=-inf for hmmlearn, so both run exactly 10).
jaxvi runs with the sequential forward-backward (``Markov(8)``, a ``lax.scan``) and with the
parallel scan (``Markov(8, parallel=True)``), and a fourth row fits the same EM written by hand in JAX
(``jax_em``): what the model itself costs in JAX on the machine, the floor under jaxvi's row. Prints compile
time (measured directly, from JAX's compilation events), run time (the faster of two compiled repeats), the
speed-up over hmmlearn with and without compile, and the final log-likelihood of both (jaxvi
``result.posterior(data).log_evidence.sum()``, hmmlearn ``score(X, lengths)``).

Part 2 (``--skip-long`` leaves it out, ``--skip-short`` leaves out part 1): ONE sequence of 1,000,000 steps, same K and D. The E-step
alone, jitted, sequential against parallel: forward only (the log evidence) and the full E-step
(forward-backward and the expected counts the M-step needs, returned so that XLA cannot drop the
backward pass); then 10 EM iterations with the parallel scan (``--long-em sequential`` or ``both`` for
the sequential scan, the faster one on a CPU) and hmmlearn's ``fit`` on the same sequence.

Every fit runs in a fresh subprocess, so compile times are cold, peak memory (ru_maxrss; on an
accelerator also the device's peak_bytes_in_use) is per fit, and the parent never holds the
accelerator. hmmlearn always runs on the CPU.

Usage:
  python benchmarks/hmm_em.py --json benchmarks/results/hmm_em_cpu.json --markdown benchmarks/results/hmm_em_cpu.md
  python benchmarks/hmm_em.py --json benchmarks/results/hmm_em_gpu.json --markdown benchmarks/results/hmm_em_gpu.md
  python benchmarks/hmm_em.py --quick --skip-long          # smoke run, small sizes
  python benchmarks/hmm_em.py --skip-short --json benchmarks/results/hmm_em_long_gpu.json ...  # part 2 alone
"""
from __future__ import annotations

import argparse
import bisect
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_model, parse, spawn, timed, write  # noqa: E402

K, D, N_SEQ, STEPS, ITERS, LONG_STEPS = 8, 4, 200, 1_000, 10, 1_000_000
QUICK = {"n_seq": 20, "steps": 200, "long_steps": 20_000}
TARGET = 5.0  # the target: jaxvi >= 5x faster than hmmlearn including compile
LL_RTOL = 1e-5  # "same log-likelihood": float32 (jaxvi) against float64 (hmmlearn)


# --- data and the shared starting point -------------------------------------------------------------

def true_hmm(seed: int = 0):
    """The HMM the data come from: sticky transitions (0.9 to stay), overlapping Gaussian states."""
    rng = np.random.default_rng(seed)
    startprob = rng.dirichlet(np.ones(K))
    transmat = 0.1 * rng.dirichlet(np.ones(K - 1), K)
    transmat = np.stack([np.insert(row, k, 0.9) for k, row in enumerate(transmat)])
    means = rng.normal(0, 2, (K, D))
    stds = rng.uniform(0.5, 1.5, (K, D))
    return startprob, transmat, means, stds


def simulate(n_seq: int, steps: int, seed: int = 1) -> np.ndarray:
    """``(n_seq, steps, D)`` float32 observations drawn from ``true_hmm()``."""
    startprob, transmat, means, stds = true_hmm()
    rng = np.random.default_rng(seed)
    first, rows = np.cumsum(startprob).tolist(), np.cumsum(transmat, axis=1).tolist()
    u = rng.random((n_seq, steps))
    states = np.empty((n_seq, steps), np.int64)
    for i in range(n_seq):  # scalar bisection: fast for one long sequence as well as for many short ones
        ui, z = u[i].tolist(), 0
        path = [0] * steps
        for t in range(steps):
            z = min(bisect.bisect_right(first if t == 0 else rows[z], ui[t]), K - 1)
            path[t] = z
        states[i] = path
    x = means[states] + stds[states] * rng.normal(size=(n_seq, steps, D))
    return x.astype(np.float32)


def initial_params(x: np.ndarray, seed: int = 2):
    """The starting point of both libraries: uniform start, 0.5 to stay, K random observations as
    means, the data's variance in every state."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(-1, D).astype(np.float64)
    startprob = np.full(K, 1.0 / K)
    transmat = np.full((K, K), 0.5 / (K - 1))
    np.fill_diagonal(transmat, 0.5)
    means = flat[rng.choice(len(flat), K, replace=False)]
    variances = np.broadcast_to(flat.var(axis=0), (K, D)).copy()
    return startprob, transmat, means, variances


# --- jaxvi --------------------------------------------------------------------------------------------

def _jax_setup(parallel: bool):
    import dataclasses

    import jax
    import jax.numpy as jnp
    import jaxvi
    from jaxvi.models import GaussianEmission, HMMParams, gaussian_hmm

    hmm = gaussian_hmm(K)
    model = dataclasses.replace(hmm.model, latent=jaxvi.Markov(K, parallel=parallel)) if parallel else hmm.model

    def to_params(startprob, transmat, means, variances) -> HMMParams:
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        return HMMParams(f32(np.log(startprob)), f32(np.log(transmat)),
                         GaussianEmission(f32(means), f32(1.0 / np.sqrt(variances))))

    return jax, jnp, jaxvi, hmm, model, to_params


def _device_info(jax) -> dict:
    device = jax.devices()[0]
    kind = device.device_kind
    info = {"device": kind if kind.lower() == device.platform else f"{device.platform} ({kind})"}
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has memory statistics
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        info["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
    return info


def jaxvi_em(x: np.ndarray, parallel: bool, iters: int) -> dict:
    """``iters`` EM iterations by ``jaxvi.infer``, from ``initial_params(x)``."""
    jax, jnp, jaxvi, hmm, model, to_params = _jax_setup(parallel)
    init = to_params(*initial_params(x))
    method = jaxvi.EM(max_iter=iters, tol=0.0, m_step=hmm.m_step)
    xj = jax.device_put(jnp.asarray(x))
    fit = lambda: jaxvi.infer(model, method, xj, key=jax.random.key(0), progress=False, init_params=init)
    first, run, compile_s, result = timed(fit)
    log_lik = float(np.sum(np.asarray(result.posterior(xj).log_evidence, np.float64)))
    params = result.params
    return {"total_s": first, "run_s": run, "compile_s": compile_s, "log_likelihood": log_lik,
            "n_iter": int(result.n_iter), "means": np.asarray(params.emission.means).tolist(),
            "transmat": np.asarray(params.transition_matrix).tolist(), **_device_info(jax)}


def jaxvi_estep(x: np.ndarray, parallel: bool) -> dict:
    """The E-step alone at ``initial_params(x)``, jitted: forward only, and the full E-step."""
    jax, jnp, jaxvi, hmm, model, to_params = _jax_setup(parallel)
    from jaxvi import exact

    params = to_params(*initial_params(x))
    xj = jax.device_put(jnp.asarray(x))

    @jax.jit
    def forward_only(params, data):
        return exact.posterior(model.log_joint, model.latent, params, data).log_evidence

    @jax.jit
    def full_estep(params, data):  # what the M-step consumes; returning it keeps the backward pass alive
        post = exact.posterior(model.log_joint, model.latent, params, data)
        return post.log_evidence, post.marginals.sum(axis=(0, 1)), post.transitions.sum(axis=0)

    out = {}
    for name, fn in (("forward", forward_only), ("estep", full_estep)):
        first, run, compile_s, value = timed(lambda: fn(params, xj))
        log_ev = value if name == "forward" else value[0]
        out[name] = {"total_s": first, "run_s": run, "compile_s": compile_s,
                     "log_likelihood": float(np.sum(np.asarray(log_ev, np.float64)))}
    return {**out, **_device_info(jax)}


def jax_em(x: np.ndarray, iters: int) -> dict:
    """The same EM written by hand in JAX (no jaxvi): the scaled forward-backward as two ``lax.scan`` over time,
    all sequences at once, hmmlearn's M-step (its default priors: ``(scatter + 1e-2) / n_k`` for the variances), and
    the forward pass at the fitted parameters for the log-likelihood; one jitted program, float32, from
    ``initial_params(x)``. What the model costs in JAX on this machine: the floor under jaxvi's row."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    covar_prior = 1e-2
    xt = jax.device_put(jnp.swapaxes(jnp.asarray(x), 0, 1))  # (T, N, D): time first, every sequence at once

    def emissions(means, variances, obs):
        """``(b, top)``: exp(log N(x_t | mean_k, variances_k) - top) and top, its maximum over the states."""
        precision = 1.0 / variances
        log_b = (obs**2 @ (-0.5 * precision).T + obs @ (means * precision).T
                 - 0.5 * jnp.sum(means**2 * precision + jnp.log(2 * jnp.pi * variances), axis=-1))
        top = jnp.max(log_b, axis=-1)
        return jnp.exp(log_b - top[..., None]), top

    def forward(params, obs):
        """Scaled forward pass: every step's filtered state probabilities (T, N, K), scales (T, N) and the
        log-likelihood."""
        start, transition, means, variances = params
        b, top = emissions(means, variances, obs)

        def step(alpha, b_t):
            a = (alpha @ transition) * b_t
            c = jnp.sum(a, axis=-1)
            return a / c[:, None], (a / c[:, None], c)

        a0 = start * b[0]
        c0 = jnp.sum(a0, axis=-1)
        _, (alphas, scales) = lax.scan(step, a0 / c0[:, None], b[1:])
        alphas = jnp.concatenate([(a0 / c0[:, None])[None], alphas])
        scales = jnp.concatenate([c0[None], scales])
        return alphas, scales, b, jnp.sum(jnp.log(scales)) + jnp.sum(top)

    def em_step(params, _):
        start, transition, _, _ = params
        alphas, scales, b, _ = forward(params, xt)

        def back(beta, inputs):  # beta_t = A (b_{t+1} beta_{t+1}) / c_{t+1}
            b_next, c_next = inputs
            weighted = b_next * beta / c_next[:, None]
            return weighted @ transition.T, (weighted @ transition.T, weighted)

        _, (betas, weighted) = lax.scan(back, jnp.ones_like(alphas[0]), (b[1:], scales[1:]), reverse=True)
        gamma = alphas * jnp.concatenate([betas, jnp.ones_like(alphas[:1])])
        xi = transition * jnp.einsum("tnk,tnl->kl", alphas[:-1], weighted)
        nk = jnp.sum(gamma, axis=(0, 1))
        sum_x = jnp.einsum("tnk,tnd->kd", gamma, xt)
        sum_x2 = jnp.einsum("tnk,tnd->kd", gamma, xt**2)
        means = sum_x / nk[:, None]
        scatter = sum_x2 - 2 * means * sum_x + means**2 * nk[:, None]
        start = jnp.sum(gamma[0], axis=0) / gamma.shape[1]
        return (start, xi / jnp.sum(xi, axis=1, keepdims=True), means, (scatter + covar_prior) / nk[:, None]), None

    @jax.jit
    def fit(params, obs):
        params, _ = lax.scan(em_step, params, None, length=iters)
        return params, forward(params, obs)[3]

    init = tuple(jnp.asarray(a, jnp.float32) for a in initial_params(x))
    first, run, compile_s, (params, log_lik) = timed(lambda: fit(init, xt))
    return {"total_s": first, "run_s": run, "compile_s": compile_s, "log_likelihood": float(log_lik),
            "n_iter": iters, "means": np.asarray(params[2]).tolist(), "transmat": np.asarray(params[1]).tolist(),
            **_device_info(jax)}


# --- hmmlearn -----------------------------------------------------------------------------------------

def _hmmlearn_model(x: np.ndarray, iters: int):
    from hmmlearn.hmm import GaussianHMM

    startprob, transmat, means, variances = initial_params(x)
    # tol=-inf: hmmlearn stops when the log-likelihood rises by less than tol, which never happens
    hmm = GaussianHMM(n_components=K, covariance_type="diag", n_iter=iters, tol=-np.inf, init_params="",
                      params="stmc", implementation="log")
    hmm.startprob_, hmm.transmat_, hmm.means_, hmm.covars_ = startprob, transmat, means, variances
    return hmm


def hmmlearn_em(x: np.ndarray, iters: int) -> dict:
    hmm = _hmmlearn_model(x, iters)
    X, lengths = x.reshape(-1, D), np.full(x.shape[0], x.shape[1])
    t0 = time.perf_counter()
    hmm.fit(X, lengths)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    log_lik = float(hmm.score(X, lengths))
    score_s = time.perf_counter() - t0
    return {"total_s": fit_s, "run_s": fit_s, "compile_s": 0.0, "log_likelihood": log_lik,
            "n_iter": int(hmm.monitor_.iter), "score_s": score_s, "means": hmm.means_.tolist(),
            "transmat": hmm.transmat_.tolist(), "device": "cpu (numpy/Cython)"}


def hmmlearn_score(x: np.ndarray) -> dict:
    """hmmlearn's forward pass (``score``) at the starting point, to set against jaxvi's E-step."""
    hmm = _hmmlearn_model(x, 1)
    X, lengths = x.reshape(-1, D), np.full(x.shape[0], x.shape[1])
    t0 = time.perf_counter()
    log_lik = float(hmm.score(X, lengths))
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hmm.predict_proba(X, lengths)  # forward-backward and the state marginals
    posterior_s = time.perf_counter() - t0
    return {"forward": {"total_s": score_s, "run_s": score_s, "compile_s": 0.0, "log_likelihood": log_lik},
            "estep": {"total_s": posterior_s, "run_s": posterior_s, "compile_s": 0.0, "log_likelihood": log_lik},
            "device": "cpu (numpy/Cython)"}


# --- the driver ---------------------------------------------------------------------------------------

TASKS = {  # name: (part, library, what it runs)
    "em-jaxvi": ("short", "jaxvi", lambda x, a: jaxvi_em(x, False, a.iters)),
    "em-jaxvi-parallel": ("short", "jaxvi parallel", lambda x, a: jaxvi_em(x, True, a.iters)),
    "em-hmmlearn": ("short", "hmmlearn", lambda x, a: hmmlearn_em(x, a.iters)),
    "em-jax": ("short", "jax by hand", lambda x, a: jax_em(x, a.iters)),
    "long-estep-jaxvi": ("long", "jaxvi", lambda x, a: jaxvi_estep(x, False)),
    "long-estep-jaxvi-parallel": ("long", "jaxvi parallel", lambda x, a: jaxvi_estep(x, True)),
    "long-estep-hmmlearn": ("long", "hmmlearn", lambda x, a: hmmlearn_score(x)),
    "long-em-jaxvi": ("long", "jaxvi", lambda x, a: jaxvi_em(x, False, a.iters)),
    "long-em-jaxvi-parallel": ("long", "jaxvi parallel", lambda x, a: jaxvi_em(x, True, a.iters)),
    "long-em-hmmlearn": ("long", "hmmlearn", lambda x, a: hmmlearn_em(x, a.iters)),
}


def run_child(task: str, args) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    part = TASKS[task][0]
    long_steps = args.long_em_steps if task.startswith("long-em") else args.long_steps
    x = simulate(1, long_steps) if part == "long" else simulate(args.n_seq, args.steps)
    out = TASKS[task][2](x, args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def spawn_task(task: str, args) -> dict:
    """Runs one task in a fresh interpreter; a failure or a time-out is recorded, not raised."""
    return spawn(__file__, ["--child", task, "--n-seq", str(args.n_seq), "--steps", str(args.steps),
                            "--long-steps", str(args.long_steps), "--long-em-steps", str(args.long_em_steps),
                            "--iters", str(args.iters)], args.child_timeout)


def _fmt(row: dict, key: str, digits: int = 2) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "-"


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _memory(r: dict) -> str:
    """Peak host RSS, and on an accelerator the device's peak bytes in use, in MB."""
    text = _fmt(r, "peak_rss_mb", 0)
    return text + (f" ({r['peak_device_mb']:.0f})" if "peak_device_mb" in r else "")


def _reduced(steps: int) -> str:
    return "" if steps == LONG_STEPS else f" (reduced from the default {LONG_STEPS:,})"


def _em_row(library: str, r: dict) -> str:
    if "error" in r:
        return f"| {library} | {r['error']} | | | | | |"
    return (f"| {library} | {_fmt(r, 'compile_s')} | {_fmt(r, 'run_s')} | {_fmt(r, 'total_s')} | {r['n_iter']} | "
            f"{r['log_likelihood']:.2f} | {_memory(r)} |")


def report(args, rows: dict, device: str) -> tuple[str, dict]:
    machine = f"{cpu_model()}, {os.cpu_count()} cores ({platform.machine()}), jax device: {device}"
    versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "hmmlearn")}
    summary: dict = {}
    lines = [f"# Gaussian HMM EM benchmark: K={K}, D={D}, diagonal covariance, {args.iters} iterations",
             f"machine: {machine}; " + "; ".join(f"{k} {v}" for k, v in versions.items()),
             "hmmlearn always runs on the CPU (implementation='log'); jaxvi float32, hmmlearn float64."]
    short = {TASKS[t][1]: rows[t] for t in ("em-jaxvi", "em-jaxvi-parallel", "em-hmmlearn", "em-jax") if t in rows}
    if short:
        lines += ["", f"## {args.n_seq} sequences x {args.steps} steps, {args.iters} EM iterations", "",
                  "| library | compile s | run s | total s | iterations | log-likelihood | peak RSS MB (device MB) |",
                  "|---|---|---|---|---|---|---|"]
    for library, r in short.items():
        lines.append(_em_row(library, r))
    lines.append("")
    ref = short.get("hmmlearn", {})
    for library in ("jaxvi", "jaxvi parallel", "jax by hand"):
        r = short.get(library, {})
        if "error" in r or "error" in ref or not r or not ref:
            continue
        rel = _rel(r["log_likelihood"], ref["log_likelihood"])
        means_diff = float(np.max(np.abs(np.array(r["means"]) - np.array(ref["means"]))))
        trans_diff = float(np.max(np.abs(np.array(r["transmat"]) - np.array(ref["transmat"]))))
        s = {"speedup_compiled": ref["run_s"] / r["run_s"], "speedup_with_compile": ref["run_s"] / r["total_s"],
             "log_likelihood_rel_diff": rel, "means_max_abs_diff": means_diff,
             "transmat_max_abs_diff": trans_diff, "iterations_equal": r["n_iter"] == ref["n_iter"] == args.iters}
        s["target_met"] = bool(s["speedup_with_compile"] >= TARGET and rel <= LL_RTOL and s["iterations_equal"])
        summary[library] = s
        lines.append(f"{library}: speed-up over hmmlearn {s['speedup_compiled']:.2f}x compiled, "
                     f"{s['speedup_with_compile']:.2f}x including compile; log-lik rel. diff {rel:.2e}; "
                     f"final means max |diff| {means_diff:.1e}, transition matrix max |diff| {trans_diff:.1e}")
        lines.append(f"  target (>= {TARGET:g}x including compile, log-lik rel. diff <= {LL_RTOL:g}, "
                     f"{args.iters} iterations each): {'MET' if s['target_met'] else 'NOT MET'}")
    jaxvi, by_hand = short.get("jaxvi", {}), short.get("jax by hand", {})
    if "run_s" in jaxvi and "run_s" in by_hand:
        summary["jaxvi_over_by_hand"] = {key: jaxvi[key] - by_hand[key] for key in ("compile_s", "run_s")}
        lines.append(f"The same EM by hand in JAX (`jax_em`: the scaled forward-backward, hmmlearn's M-step, one "
                     f"jitted program) is what the model costs in JAX here; jaxvi's fit adds "
                     f"{jaxvi['compile_s'] - by_hand['compile_s']:.2f} s of compile and "
                     f"{jaxvi['run_s'] - by_hand['run_s']:.2f} s of run to it.")
    if "em-hmmlearn" in rows and "score_s" in rows["em-hmmlearn"]:
        lines.append(f"(hmmlearn score() at the fitted parameters, forward pass only: "
                     f"{rows['em-hmmlearn']['score_s']:.2f} s)")

    if not args.skip_long:
        lines += ["", f"## one sequence of {args.long_steps:,} steps: the E-step alone{_reduced(args.long_steps)}", "",
                  "At the starting point. jaxvi: jitted `exact.posterior`; forward = the log evidence only, "
                  "E-step = forward-backward and the expected state and transition counts. hmmlearn: `score` "
                  "(forward) and `predict_proba` (forward-backward and the state marginals).", "",
                  "| what | library | compile s | run s | total s | log-likelihood | peak RSS MB (device MB) |",
                  "|---|---|---|---|---|---|---|"]
        for what in ("forward", "estep"):
            for task in ("long-estep-jaxvi", "long-estep-jaxvi-parallel", "long-estep-hmmlearn"):
                r = rows.get(task)
                if r is None:
                    continue
                if "error" in r:
                    lines.append(f"| {what} | {TASKS[task][1]} | {r['error']} | | | | |")
                    continue
                w = r[what]
                lines.append(f"| {what} | {TASKS[task][1]} | {_fmt(w, 'compile_s')} | {_fmt(w, 'run_s')} | "
                             f"{_fmt(w, 'total_s')} | {w['log_likelihood']:.2f} | {_memory(r)} |")
        lines.append("")
        seq, par, h = (rows.get(t, {}) for t in ("long-estep-jaxvi", "long-estep-jaxvi-parallel", "long-estep-hmmlearn"))
        long_summary = {}
        for what in ("forward", "estep"):
            if what in seq and what in par:
                rel = _rel(par[what]["log_likelihood"], seq[what]["log_likelihood"])
                ratio = seq[what]["run_s"] / par[what]["run_s"]
                long_summary[f"{what}_parallel_over_sequential_speedup"] = ratio
                long_summary[f"{what}_parallel_vs_sequential_log_evidence_rel_diff"] = rel
                lines.append(f"{what}: parallel is {ratio:.2f}x as fast as sequential (compiled); "
                             f"log evidence rel. diff parallel vs sequential {rel:.2e}")
            if what in seq and what in h:
                ratio = h[what]["run_s"] / seq[what]["run_s"]
                long_summary[f"{what}_sequential_speedup_over_hmmlearn"] = ratio
                lines.append(f"{what}: jaxvi sequential is {ratio:.2f}x as fast as hmmlearn (compiled)")
        if "forward" in seq and "forward" in h:
            rel = _rel(seq["forward"]["log_likelihood"], h["forward"]["log_likelihood"])
            long_summary["log_evidence_rel_diff_vs_hmmlearn"] = rel
            lines.append(f"log evidence rel. diff jaxvi sequential vs hmmlearn: {rel:.2e}")

        em_tasks = [t for t in ("long-em-jaxvi", "long-em-jaxvi-parallel", "long-em-hmmlearn") if t in rows]
        if em_tasks:
            lines += ["", f"## one sequence of {args.long_em_steps:,} steps: {args.iters} EM iterations"
                          f"{_reduced(args.long_em_steps)}", "",
                      "| library | compile s | run s | total s | iterations | log-likelihood | peak RSS MB (device MB) |",
                      "|---|---|---|---|---|---|---|"]
            for task in em_tasks:
                lines.append(_em_row(TASKS[task][1], rows[task]))
            lines.append("")
            h = rows.get("long-em-hmmlearn", {})
            for task in ("long-em-jaxvi", "long-em-jaxvi-parallel"):
                r = rows.get(task, {})
                if "run_s" in r and "run_s" in h:
                    s = {"speedup_compiled": h["run_s"] / r["run_s"], "speedup_with_compile": h["run_s"] / r["total_s"],
                         "log_likelihood_rel_diff": _rel(r["log_likelihood"], h["log_likelihood"])}
                    long_summary[f"em {TASKS[task][1]}"] = s
                    lines.append(f"{TASKS[task][1]}: speed-up over hmmlearn {s['speedup_compiled']:.2f}x compiled, "
                                 f"{s['speedup_with_compile']:.2f}x including compile; log-lik rel. diff "
                                 f"{s['log_likelihood_rel_diff']:.2e}")
        summary["long"] = long_summary
    meta = {"machine": machine, **versions, "k": K, "d": D, "iterations": args.iters, "n_seq": args.n_seq,
            "steps": args.steps, "long_steps": None if args.skip_long else args.long_steps,
            "long_em_steps": None if args.skip_long or args.skip_long_em else args.long_em_steps,
            "target_speedup_with_compile": TARGET, "log_likelihood_rtol": LL_RTOL}
    return "\n".join(lines), {**meta, "summary": summary}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-seq", type=int, default=N_SEQ, help="sequences in part 1")
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per sequence in part 1")
    parser.add_argument("--long-steps", type=int, default=LONG_STEPS, help="steps of the one sequence in part 2")
    parser.add_argument("--long-em-steps", type=int, default=None,
                        help="steps of the one sequence for part 2's EM fits (default: --long-steps)")
    parser.add_argument("--iters", type=int, default=ITERS, help="EM iterations")
    parser.add_argument("--skip-short", action="store_true", help="leave out part 1 (the many sequences)")
    parser.add_argument("--skip-long", action="store_true", help="leave out part 2 (the long sequence)")
    parser.add_argument("--skip-long-em", action="store_true", help="in part 2, time the E-step only")
    parser.add_argument("--long-em", choices=("parallel", "sequential", "both"), default="parallel",
                        help="in part 2, which jaxvi variants fit EM (on an accelerator the parallel one; on a CPU "
                             "the sequential one, whose 10^6 steps run one after another)")
    args = parse(parser, QUICK, TASKS)
    if args.long_em_steps is None:
        args.long_em_steps = args.long_steps
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return

    tasks = [] if args.skip_short else ["em-jaxvi", "em-jaxvi-parallel", "em-hmmlearn", "em-jax"]
    if not args.skip_long:
        tasks += ["long-estep-jaxvi", "long-estep-jaxvi-parallel", "long-estep-hmmlearn"]
        if not args.skip_long_em:
            tasks += ["long-em-jaxvi"] if args.long_em in ("sequential", "both") else []
            tasks += ["long-em-jaxvi-parallel"] if args.long_em in ("parallel", "both") else []
            tasks += ["long-em-hmmlearn"]
    rows = {}
    for task in tasks:
        rows[task] = spawn_task(task, args)
    device = next((r["device"] for t, r in rows.items() if "jaxvi" in t and "device" in r), "unknown")
    text, meta = report(args, rows, device)
    write(args, text, meta, [{"task": t, "part": TASKS[t][0], "library": TASKS[t][1], **r} for t, r in rows.items()])


if __name__ == "__main__":
    main()
