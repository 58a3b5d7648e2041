"""A VAE on binarised digits: jaxvi's Amortized against the same VAE written in PyTorch (CPU, 2 threads).

scikit-learn's bundled 8x8 digits (1,797 images, pixels > 8 of 16 set to 1); the first 1,500 train,
the last 297 test. Encoder 64-256-256-(2x8), decoder 8-256-256-64, tanh; a diagonal Normal q with
softplus scales; Bernoulli likelihood; the ELBO with one particle; batch 128 in shuffled epochs
(11 full batches per epoch); Adam 1e-3; 3,000 steps; the same initial weights in both. Each library
runs in a fresh subprocess; its wall time covers the training (jaxvi: ``jaxvi.infer``, compile
included, the compile time measured directly from JAX's compilation events; PyTorch: the training loop).
Then, outside the timed part, the final training ELBO (100 particles per image) and the test
log-likelihood by importance sampling from the encoder (IWAE-5000), for both. A third row, the same VAE written by
hand in JAX and optax (``jax_run``), shows what the model itself costs in JAX and what jaxvi's run adds; the report
also gives the matrix products' FLOP rate of each, against a chain of the step's largest product on the same machine.

Usage:
  python benchmarks/vae_digits.py --json benchmarks/results/vae_digits_cpu.json --markdown benchmarks/results/vae_digits_cpu.md
  python benchmarks/vae_digits.py --quick
"""
from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, parse, run_child, spawn, timed, write  # noqa: E402

LATENT, HIDDEN, BATCH, LR, STEPS, N_TRAIN = 8, 256, 128, 1e-3, 3_000, 1_500
ELBO_PARTICLES, IWAE_K = 100, 5_000
QUICK = {"steps": 200, "iwae_k": 100}
TARGET = 2.0


def initial_weights(seed: int = 0) -> dict:
    """The networks' starting weights, shared by both libraries: N(0, 1/fan-in), zero biases; ``W`` is
    (in, out) as jaxvi's MLP holds it (PyTorch's Linear takes the transpose)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, sizes in (("encoder", (64, HIDDEN, HIDDEN, 2 * LATENT)), ("decoder", (LATENT, HIDDEN, HIDDEN, 64))):
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            weights[f"{name}_{i}_w"] = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
            weights[f"{name}_{i}_b"] = np.zeros(b, np.float32)
    return weights


def layer_list(weights: dict, name: str) -> list:
    return [(weights[f"{name}_{i}_w"], weights[f"{name}_{i}_b"]) for i in range(3)]


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x = (load_digits().data > 8).astype(np.float32)
    return x[:N_TRAIN], x[N_TRAIN:]


def jaxvi_run(steps: int, iwae_k: int) -> dict:
    import jax
    import optax

    import jaxvi

    train, test = digits()
    weights = initial_weights()
    mlp = jaxvi.nn.mlp((HIDDEN, HIDDEN))
    encoder = jaxvi.nn.Network(lambda key, x, out_dim: layer_list(weights, "encoder"), mlp.apply)
    vae = jaxvi.models.vae(LATENT, 64, decoder=mlp)
    init = jaxvi.models.VAEParams(layer_list(weights, "decoder"), np.zeros(64, np.float32))
    method = jaxvi.Amortized(encoder=encoder, num_steps=steps, batch_size=BATCH, optimizer=optax.adam(LR),
                             validation=0.0)
    train_j = jax.device_put(train)
    fit = lambda: jaxvi.infer(vae.model, method, train_j, key=jax.random.key(0), progress=False, init_params=init)
    total, run, compile_s, result = timed(fit, repeats=1)
    elbo, elbo_se = method.elbo(result, train_j, key=jax.random.key(1), num_particles=ELBO_PARTICLES)
    iwae = jaxvi.evidence(vae.model, result.params, test, key=jax.random.key(2), posterior=result.posterior(test),
                          num_samples=iwae_k)
    return {"total_s": total, "run_s": run, "compile_s": compile_s,
            "train_elbo": float(elbo) / len(train), "train_elbo_se": float(elbo_se) / len(train),
            "test_iwae": float(iwae.log_evidence) / len(test), "test_iwae_se": float(iwae.stderr) / len(test),
            "device": str(jax.devices()[0].device_kind)}


def step_flops(batch: int = BATCH) -> float:
    """The floating-point operations of one training step's matrix products: 2 per multiply-add, forward and a
    backward pass of twice the forward's (the gradients of the weights and of the layers' inputs)."""
    sizes = [(64, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 2 * LATENT), (LATENT, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 64)]
    return 3 * 2 * batch * sum(a * b for a, b in sizes)


def jax_run(steps: int, iwae_k: int) -> dict:
    """The same VAE written by hand in JAX and optax, trained in one jitted ``lax.scan`` compiled with jaxvi's XLA
    options (``jaxvi.compiler_options()``): what the model itself costs in JAX, without jaxvi's run around it (its
    fault guards, the state it keeps, its record). Shuffled epochs as the others, 1 particle, the same weights.
    Also timed: a chain of this step's largest product (128 x 256 by 256 x 256), the rate this machine reaches on
    such small products."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxvi

    train, test = (jnp.asarray(a) for a in digits())
    weights = initial_weights()
    params = {name: [tuple(map(jnp.asarray, layer)) for layer in layer_list(weights, name)]
              for name in ("encoder", "decoder")}
    offset = math.log(math.expm1(0.1))
    optimizer = optax.adam(LR)
    per_epoch = len(train) // BATCH

    def mlp(layers, h):
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            h = jnp.tanh(h) if i < len(layers) - 1 else h
        return h

    def log_weights(params, x, key, particles):
        """``(particles, batch)`` log p(x, z) - log q(z | x) for z ~ q(z | x)."""
        out = mlp(params["encoder"], x)
        loc, scale = out[:, :LATENT], jax.nn.softplus(out[:, LATENT:] + offset)
        eps = jax.random.normal(key, (particles, *loc.shape))
        z = loc + scale * eps
        logits = mlp(params["decoder"], z)
        log_lik = jnp.sum(x * logits - jax.nn.softplus(logits), -1)
        log_prior = -0.5 * jnp.sum(z**2, -1) - 0.5 * LATENT * math.log(2 * math.pi)
        log_q = jnp.sum(-0.5 * eps**2 - jnp.log(scale), -1) - 0.5 * LATENT * math.log(2 * math.pi)
        return log_lik + log_prior - log_q

    def fit(params, key):
        def step(carry, i):
            params, opt_state, order = carry
            order = jax.lax.cond(i % per_epoch == 0, lambda: jax.random.permutation(jax.random.fold_in(key, i),
                                                                                     len(train)), lambda: order)
            index = jax.lax.dynamic_slice_in_dim(order, (i % per_epoch) * BATCH, BATCH)
            loss = lambda p: -jnp.sum(log_weights(p, train[index], jax.random.fold_in(key, -1 - i), 1)) * (
                len(train) / BATCH)
            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, order), value

        start = (params, optimizer.init(params), jnp.arange(len(train)))
        return jax.lax.scan(step, start, jnp.arange(steps))[0][0]

    t0 = time.perf_counter()
    compiled = jax.jit(fit, compiler_options=jaxvi.compiler_options()).lower(params, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = jax.block_until_ready(compiled(params, jax.random.key(0)))
    run_s = time.perf_counter() - t0

    a, w = jnp.ones((BATCH, HIDDEN), jnp.float32), jnp.ones((HIDDEN, HIDDEN), jnp.float32) / HIDDEN
    chain = jax.jit(lambda a, w: jax.lax.fori_loop(0, 1000, lambda i, h: jnp.tanh(h @ w), a))
    jax.block_until_ready(chain(a, w))
    t0 = time.perf_counter()
    jax.block_until_ready(chain(a, w))
    chain_rate = 1000 * 2 * BATCH * HIDDEN * HIDDEN / (time.perf_counter() - t0)

    train_w = np.asarray(jax.jit(log_weights, static_argnums=3)(fitted, train, jax.random.key(1), ELBO_PARTICLES),
                         np.float64)
    iwae_one = jax.jit(lambda x, key: log_weights(fitted, x[None], key, iwae_k)[:, 0])
    test_w = np.stack([np.asarray(iwae_one(x, jax.random.fold_in(jax.random.key(2), i)), np.float64)
                       for i, x in enumerate(test)])                                            # (images, k)
    top = test_w.max(1, keepdims=True)
    log_mean = np.log(np.mean(np.exp(test_w - top), 1)) + top[:, 0]
    variance = np.exp(test_w - log_mean[:, None]).var(1) / iwae_k
    return {"total_s": compile_s + run_s, "run_s": run_s, "compile_s": compile_s,
            "train_elbo": float(train_w.mean()), "train_elbo_se": float(np.sqrt(train_w.var(0).sum() / ELBO_PARTICLES)
                                                                       / len(train)),
            "test_iwae": float(log_mean.mean()), "test_iwae_se": float(np.sqrt(variance.sum()) / len(test)),
            "device": str(jax.devices()[0].device_kind), "matmul_chain_gflops": chain_rate / 1e9}


def torch_run(steps: int, iwae_k: int) -> dict:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    train, test = (torch.tensor(a) for a in digits())
    layers = lambda sizes: torch.nn.Sequential(*[m for a, b in zip(sizes[:-1], sizes[1:])
                                                 for m in (torch.nn.Linear(a, b), torch.nn.Tanh())][:-1])
    encoder, decoder = layers((64, HIDDEN, HIDDEN, 2 * LATENT)), layers((LATENT, HIDDEN, HIDDEN, 64))
    weights = initial_weights()
    with torch.no_grad():  # the same starting weights as jaxvi's
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            for (w, b), linear in zip(layer_list(weights, name), [m for m in net if isinstance(m, torch.nn.Linear)]):
                linear.weight.copy_(torch.tensor(w.T))
                linear.bias.copy_(torch.tensor(b))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    offset = math.log(math.expm1(0.1))  # jaxvi's MeanField: an encoder output of 0 is a scale of 0.1

    def log_weights(x, particles):
        """``(particles, batch)`` log p(x, z) - log q(z | x) for z ~ q(z | x)."""
        out = encoder(x)
        loc, scale = out[:, :LATENT], torch.nn.functional.softplus(out[:, LATENT:] + offset)
        eps = torch.randn((particles, *loc.shape))
        z = loc + scale * eps
        logits = decoder(z)
        log_lik = (x * logits - torch.nn.functional.softplus(logits)).sum(-1)
        log_prior = -0.5 * (z**2).sum(-1) - 0.5 * LATENT * math.log(2 * math.pi)
        log_q = (-0.5 * eps**2 - torch.log(scale)).sum(-1) - 0.5 * LATENT * math.log(2 * math.pi)
        return log_lik + log_prior - log_q

    per_epoch = len(train) // BATCH
    t0 = time.perf_counter()
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(train))
        index = order[(step % per_epoch) * BATCH:(step % per_epoch + 1) * BATCH]
        loss = -log_weights(train[index], 1).sum() * (len(train) / BATCH)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    total = time.perf_counter() - t0
    with torch.no_grad():
        weights = log_weights(train, ELBO_PARTICLES).double()                     # (particles, N)
        elbo = weights.mean(0)
        iwae, variance = [], []
        for x in test:  # IWAE-k per test image, its delta-method variance
            w = torch.cat([log_weights(x[None], min(1000, iwae_k - i))[:, 0] for i in range(0, iwae_k, 1000)]).double()
            log_mean = torch.logsumexp(w, 0) - math.log(iwae_k)
            iwae.append(log_mean)
            variance.append(torch.exp(w - log_mean).var(unbiased=False) / iwae_k)
    return {"total_s": total, "run_s": total, "compile_s": 0.0,
            "train_elbo": float(elbo.mean()), "train_elbo_se": float(weights.var(0).sum().sqrt() / ELBO_PARTICLES**0.5
                                                                       / len(train)),
            "test_iwae": float(torch.stack(iwae).mean()), "test_iwae_se": float(torch.stack(variance).sum().sqrt()
                                                                                / len(test)),
            "device": "cpu (2 threads)"}


TASKS = {"jaxvi": lambda a: jaxvi_run(a.steps, a.iwae_k), "pytorch": lambda a: torch_run(a.steps, a.iwae_k),
         "jax": lambda a: jax_run(a.steps, a.iwae_k)}  # the same VAE by hand in JAX: what jaxvi's run adds


def report(args, rows: dict, where: str) -> tuple[str, dict]:
    names = ("jax", "jaxlib", "torch")
    versions = {name: importlib.metadata.version(name) for name in names}
    lines = [f"# VAE on binarised digits: {LATENT}-d latent, 64-{HIDDEN}-{HIDDEN}-(2x{LATENT}) encoder, "
             f"{LATENT}-{HIDDEN}-{HIDDEN}-64 decoder, batch {BATCH}, Adam {LR}, {args.steps} steps",
             f"machine: {where}; " + "; ".join(f"{k} {v}" for k, v in versions.items()), "",
             "| library | device | compile s | run s | total s | train ELBO / image | test IWAE-"
             f"{args.iwae_k} / image | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for library, r in rows.items():
        if "error" in r:
            lines.append(f"| {library} | {r['error']} | | | | | | |")
            continue
        lines.append(f"| {library} | {r['device']} | {r['compile_s']:.2f} | {r['run_s']:.2f} | {r['total_s']:.2f} | "
                     f"{r['train_elbo']:.3f} ± {r['train_elbo_se']:.3f} | {r['test_iwae']:.3f} ± "
                     f"{r['test_iwae_se']:.3f} | {r['peak_rss_mb']:.0f} |")
    summary = {}
    j, p = rows.get("jaxvi", {}), rows.get("pytorch", {})
    if "total_s" in j and "total_s" in p:
        ratio = p["total_s"] / j["total_s"]
        diff = j["train_elbo"] - p["train_elbo"]
        se = math.hypot(j["train_elbo_se"], p["train_elbo_se"])
        summary = {"speedup_with_compile": ratio, "speedup_compiled": p["run_s"] / j["run_s"],
                   "train_elbo_diff_per_image": diff, "target_met": bool(ratio >= TARGET)}
        lines += ["", f"jaxvi is {ratio:.2f}x as fast including compile, {summary['speedup_compiled']:.2f}x compiled; "
                      f"final training ELBO per image differs by {diff:+.3f} (standard error of the difference "
                      f"{se:.3f}; same initial weights; different minibatch orders and noise)",
                  f"  target (>= {TARGET:g}x including compile): {'MET' if summary['target_met'] else 'NOT MET'}"]
    h = rows.get("jax", {})
    if "total_s" in h and "total_s" in j and "total_s" in p:
        flops = step_flops() * args.steps
        rate = lambda r: flops / r["run_s"] / 1e9  # noqa: E731
        summary.update(hand_written_with_compile=p["total_s"] / h["total_s"], jaxvi_extra_compile_s=j["compile_s"]
                       - h["compile_s"], jaxvi_extra_run_s=j["run_s"] - h["run_s"], run_flops=flops,
                       matmul_chain_gflops=h["matmul_chain_gflops"])
        lines += [f"The same VAE by hand in JAX (one jitted scan, jaxvi's XLA options): {summary['hand_written_with_compile']:.2f}x "
                  f"PyTorch including compile; jaxvi's run around the step (its guards, the state it keeps, its record, the "
                  f"final evaluation) adds {summary['jaxvi_extra_compile_s']:.2f} s of compile and "
                  f"{summary['jaxvi_extra_run_s']:.2f} s of run.",
                  f"The {args.steps} steps' matrix products are {flops / 1e9:.0f} GFLOP: jaxvi ran at {rate(j):.0f} GFLOP/s, "
                  f"by hand {rate(h):.0f}, PyTorch {rate(p):.0f}; a chain of this step's largest product (128 x 256 by "
                  f"256 x 256) runs at {h['matmul_chain_gflops']:.0f} GFLOP/s here, {flops / h['matmul_chain_gflops'] / 1e9:.2f} s "
                  f"for these steps."]
    return "\n".join(lines), {"machine": where, **versions, "steps": args.steps, "iwae_k": args.iwae_k,
                              "summary": summary}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--iwae-k", type=int, default=IWAE_K)
    args = parse(parser, QUICK, TASKS)
    if args.child:
        run_child(TASKS[args.child], args)
        return
    size = ["--steps", str(args.steps), "--iwae-k", str(args.iwae_k)]
    rows = {task: spawn(__file__, ["--child", task, *size], args.child_timeout) for task in TASKS}
    import jax

    write(args, *report(args, rows, machine(jax)), rows)


if __name__ == "__main__":
    main()
