"""SVI with per-datum (local) guides on minibatches: the time of one step as the number of data N grows.

A random-effects model, mu ~ N(0, 10^2 I_2) shared, b_i ~ N(mu, I_2) per datum, x_i ~ N(b_i, 0.5^2 I_2);
a mean-field Normal q for mu and one for every b_i (jaxvi ``MeanField()`` global and local guides, NumPyro
``AutoNormal`` with the data in a ``plate(subsample_size=B)``); Adam 1e-2, one particle, minibatches of
B = 256 drawn without replacement every step. A step touches B of the N per-datum guides, so its work is
O(B); the time of one step should not grow with N.

Each library's step time is the difference of two compiled runs of ``--steps`` and 6 x ``--steps`` steps
divided by the steps between them (compile and per-call overheads cancel): jaxvi's ``infer`` (its whole
run loop: minibatch draw, step, trace, stopping rule), NumPyro's ``svi.update`` in a jitted ``fori_loop``.
Each N runs in a fresh process.

Usage:
  python benchmarks/svi_local_scaling.py --json benchmarks/results/svi_local_scaling_cpu.json \\
      --markdown benchmarks/results/svi_local_scaling_cpu.md
  python benchmarks/svi_local_scaling.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, parse, run_child, spawn, write  # noqa: E402

SIZES, BATCH, STEPS, LR = (10_000, 100_000, 1_000_000), 256, 400, 1e-2
QUICK = {"sizes": [2_000, 20_000], "steps": 100}


def simulate(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    b = rng.normal(np.array([1.0, -2.0]), 1.0, (n, 2))
    return (b + rng.normal(0.0, 0.5, (n, 2))).astype(np.float32)


def jaxvi_step_seconds(args) -> dict:
    import jax
    import optax
    from jax.scipy.stats import norm

    import jaxvi

    x = simulate(args.child_n)
    latent = {"mu": jaxvi.Global(jaxvi.Real((2,)), lambda params, mu: norm.logpdf(mu, 0.0, 10.0).sum()),
              "b": jaxvi.Real((2,))}
    model = jaxvi.Model(lambda params, z, x: norm.logpdf(z["b"], z["mu"], 1.0).sum() + norm.logpdf(x, z["b"], 0.5).sum(),
                        latent, init=lambda key, data: {})

    def run(steps):
        method = jaxvi.SVI(num_steps=steps, batch_size=BATCH, optimizer=optax.adam(LR), num_eval_particles=1)
        fit = lambda seed: jaxvi.infer(model, method, x, key=jax.random.key(seed), progress=False)  # noqa: E731
        jax.block_until_ready(fit(0).objective)  # compiles
        started = time.perf_counter()
        jax.block_until_ready(fit(1).objective)
        return time.perf_counter() - started

    short, long = run(args.steps), run(6 * args.steps)
    return {"step_s": (long - short) / (5 * args.steps)}


def numpyro_step_seconds(args) -> dict:
    import jax
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    x = jax.numpy.asarray(simulate(args.child_n))
    n = len(x)

    def model(x):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
        with numpyro.plate("data", n, subsample_size=BATCH) as index:
            b = numpyro.sample("b", dist.Normal(mu, 1.0).to_event(1))
            numpyro.sample("x", dist.Normal(b, 0.5).to_event(1), obs=x[index])

    svi = SVI(model, AutoNormal(model), optax.adam(LR), Trace_ELBO())
    state = svi.init(jax.random.key(0), x)
    run = jax.jit(lambda state, steps: jax.lax.fori_loop(0, steps, lambda i, s: svi.update(s, x)[0], state))

    def timed(steps):
        jax.block_until_ready(run(state, steps))  # compiles (the step count is traced: once)
        started = time.perf_counter()
        jax.block_until_ready(run(state, steps))
        return time.perf_counter() - started

    short, long = timed(args.steps), timed(6 * args.steps)
    return {"step_s": (long - short) / (5 * args.steps)}


TASKS = {"jaxvi": jaxvi_step_seconds, "numpyro": numpyro_step_seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    args = parse(parser, QUICK, TASKS)
    if args.child:
        return run_child(TASKS[args.child], args)
    import jax
    import numpyro

    rows = {}
    for n in args.sizes:
        for library in TASKS:
            rows[f"{library} {n}"] = spawn(__file__, ["--child", library, "--child-n", str(n), "--steps",
                                                      str(args.steps)], args.child_timeout)
    lines = [f"# SVI with local guides on minibatches of {BATCH}: time per step against N",
             f"machine: {machine(jax)}; jax {jax.__version__}; numpyro {numpyro.__version__}", "",
             "| N | jaxvi ms/step | NumPyro ms/step | NumPyro / jaxvi | jaxvi peak RSS MB | NumPyro peak RSS MB |",
             "|---|---|---|---|---|---|"]
    summary = {}
    for n in args.sizes:
        ours, theirs = rows[f"jaxvi {n}"], rows[f"numpyro {n}"]
        if "error" in ours or "error" in theirs:
            lines.append(f"| {n} | {ours.get('error', '')} | {theirs.get('error', '')} | | | |")
            continue
        ratio = theirs["step_s"] / ours["step_s"]
        summary[f"N={n}"] = {"jaxvi_ms": 1e3 * ours["step_s"], "numpyro_ms": 1e3 * theirs["step_s"], "speedup": ratio}
        lines.append(f"| {n} | {1e3 * ours['step_s']:.3f} | {1e3 * theirs['step_s']:.3f} | {ratio:.2f}x | "
                     f"{ours['peak_rss_mb']:.0f} | {theirs['peak_rss_mb']:.0f} |")
    first, last = f"N={args.sizes[0]}", f"N={args.sizes[-1]}"
    if first in summary and last in summary:
        growth = summary[last]["jaxvi_ms"] / summary[first]["jaxvi_ms"]
        summary["jaxvi_growth"] = growth
        lines += ["", f"jaxvi's step time at N = {args.sizes[-1]} is {growth:.2f}x its time at N = {args.sizes[0]} "
                      f"(flat: the target; {'MET' if growth <= 1.2 else 'MISSED'} within 20%); NumPyro's is "
                      f"{summary[last]['numpyro_ms'] / summary[first]['numpyro_ms']:.2f}x."]
    write(args, "\n".join(lines), {"machine": machine(jax), "jax": jax.__version__, "summary": summary}, rows)


if __name__ == "__main__":
    main()
