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


# --- Sweeps: infer in a loop that builds its settings afresh each call ----------------------------
# ``--sweep``: each case runs in a fresh process, calling infer ``--calls`` times (small data, few steps)
# with new optimiser / model objects, and reports resident memory (VmRSS), memory maps (lines of
# /proc/self/maps; the kernel stops a process at vm.max_map_count, 65,530 by default) and XLA
# compilations every ``--every`` calls. Settings built alike must compile once and hold both flat; settings
# that differ every call compile every call, and the bounded cache of compiled fits must hold them flat.
#   python benchmarks/soak.py --sweep --json benchmarks/results/soak_sweep_cpu.json \
#       --markdown benchmarks/results/soak_sweep_cpu.md

SWEEP_CALLS, SWEEP_EVERY = 1_000, 100
SWEEP_CASES = ("fresh optax.adam(1e-2) (SVI)", "fresh Model of the same functions (SVI)",
               "fresh lambda log-joint (SVI)", "fresh zoo model and M-step (EM, GMM)",
               "a new learning rate, traced (SVI)", "a new built optax.adam(rate) (SVI)",
               "a new constant captured by the log-joint (EM, GMM)")
DISTINCT = "a new built optax.adam(rate) (SVI)"
SLOW = {DISTINCT: 10, SWEEP_CASES[-1]: 10}  # cases that compile every call run calls / this many


def sweep_settings(case: str):
    """``(data, settings)``: ``settings(i)`` builds call i's model and method afresh, as a notebook loop does."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxvi

    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    latent = jaxvi.Global({"mu": jaxvi.Real((2,))}, lambda p, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["mu"], 0, 10)))

    def log_joint(params, z, x):
        return jnp.sum(jax.scipy.stats.norm.logpdf(x, z["mu"], 1.0))

    def init(key, data):
        return {}

    model, gm = jaxvi.Model(log_joint, latent, init), jaxvi.models.gaussian_mixture(2)
    settings = {
        "fresh optax.adam(1e-2) (SVI)": lambda i: (model, jaxvi.SVI(num_steps=20, optimizer=optax.adam(1e-2))),
        "fresh Model of the same functions (SVI)": lambda i: (jaxvi.Model(log_joint, latent, init), jaxvi.SVI(num_steps=20)),
        "fresh lambda log-joint (SVI)": lambda i: (
            jaxvi.Model(lambda p, z, x: jnp.sum(jax.scipy.stats.norm.logpdf(x, z["mu"], 1.0)), latent, init),
            jaxvi.SVI(num_steps=20)),
        "fresh zoo model and M-step (EM, GMM)": lambda i: _zoo_em(jaxvi.models.gaussian_mixture(2)),
        "a new learning rate, traced (SVI)": lambda i: (model, jaxvi.SVI(num_steps=20, learning_rate=1e-2 + 1e-5 * i)),
        DISTINCT: lambda i: (model, jaxvi.SVI(num_steps=20, optimizer=optax.adam(1e-2 + 1e-5 * i))),
        "a new constant captured by the log-joint (EM, GMM)": lambda i: _shifted_em(gm, 1e-6 * i),
    }
    return x, settings[case]


def _zoo_em(gm):
    import jaxvi

    return gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=20)


def _shifted_em(gm, shift: float):
    """The GMM with its log-joint shifted by a constant it captures: a model unequal to every other."""
    import jaxvi

    model = jaxvi.Model(lambda p, z, x: gm.model.log_joint(p, z, x) + shift, gm.model.latent, gm.model.init)
    return model, jaxvi.EM(m_step=gm.m_step, max_iter=20)


def sweep_case(case: str, calls: int, every: int) -> dict:
    """Runs one case's loop in this process; the samples of memory, maps and compilations."""
    import jax

    import jaxvi

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(secs) if event == "/jax/core/compile/backend_compile_duration" else None)
    x, settings = sweep_settings(case)
    samples, started = [_sample(0, compiles, 0.0)], time.perf_counter()
    for i in range(calls):
        model, method = settings(i)
        jaxvi.infer(model, method, x, key=jax.random.key(i), progress=False)
        if i == 0 or (i + 1) % every == 0 or i + 1 == calls:
            samples.append(_sample(i + 1, compiles, time.perf_counter() - started))
    return {"case": case, "calls": calls, "samples": samples}


def _sample(calls: int, compiles: list, seconds: float) -> dict:
    with open("/proc/self/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    try:
        from jaxvi.run.compiled import cached_fits
        cached = cached_fits()
    except ImportError:  # a jaxvi without the bounded cache (to measure before)
        cached = None
    return {"calls": calls, "rss_mb": rss_kb / 1024, "maps": maps, "compiles": len(compiles),
            "compile_seconds": sum(compiles), "seconds": seconds, "cached_fits": cached}


def sweep_report(args) -> None:
    """Every case in a fresh process; the report (markdown table per case, JSON of every sample)."""
    import jax
    from _common import spawn

    rows, lines = {}, []
    for case in SWEEP_CASES:
        calls, every = max(1, args.calls // SLOW.get(case, 1)), max(1, args.every // SLOW.get(case, 1))
        rows[case] = spawn(os.path.abspath(__file__), ["--sweep-case", case, "--calls", str(calls), "--every", str(every)],
                           timeout=args.child_timeout)
    lines += [f"# Soak: sweeps of infer with settings built afresh every call ({args.calls} calls a case, "
              f"fewer where every call compiles)",
              f"machine: {machine(jax)}; jax {jax.__version__}", "",
              "Each case runs in a fresh process (SVI: 20 steps, EM: 20 iterations, 20 data of 2 dimensions, "
              "progress=False). Flat: resident memory and memory maps after the first sample hold still.", "",
              "| case | calls | compilations (first call / after) | resident MB (after 1 call -> end) | "
              "memory maps (after 1 call -> end) | ms per call after the first |", "|---|---|---|---|---|---|"]
    for case, row in rows.items():
        if "error" in row:
            lines.append(f"| {case} | error: {row['error']} | | | | |")
            continue
        first, last = row["samples"][1], row["samples"][-1]
        per_call = 1e3 * (last["seconds"] - first["seconds"]) / max(1, last["calls"] - first["calls"])
        lines.append(f"| {case} | {row['calls']} | {first['compiles']} / {last['compiles'] - first['compiles']} | "
                     f"{first['rss_mb']:.0f} -> {last['rss_mb']:.0f} | {first['maps']} -> {last['maps']} | {per_call:.0f} |")
    lines += ["", "Every sample (calls: resident MB, memory maps, compilations so far, fits holding compiled code):", ""]
    for case, row in rows.items():
        samples = ", ".join(f"{s['calls']}: {s['rss_mb']:.0f} MB {s['maps']} maps {s['compiles']} c"
                            + ("" if s["cached_fits"] is None else f" {s['cached_fits']} f") for s in row.get("samples", []))
        lines.append(f"- {case}: {samples}")
    write(args, "\n".join(lines), {"machine": machine(jax), "jax": jax.__version__, "calls": args.calls}, rows)


def sweep_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Soak: sweeps of infer with settings built afresh every call")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--calls", type=int, default=SWEEP_CALLS, help="infer calls per case (fewer for the "
                        "cases that compile every call)")
    parser.add_argument("--every", type=int, default=SWEEP_EVERY, help="calls between samples")
    parser.add_argument("--sweep-case", choices=SWEEP_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--child-timeout", type=float, default=3 * 3600)
    parser.add_argument("--quick", action="store_true", help="50 calls a case, a sample every 10")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.every = 50, 10
    if args.sweep_case:
        import json

        print(json.dumps(sweep_case(args.sweep_case, args.calls, args.every)))
    else:
        sweep_report(args)


if __name__ == "__main__":
    if "--sweep" in sys.argv[1:] or "--sweep-case" in sys.argv[1:]:
        sweep_main(sys.argv[1:])
    else:
        main()
