"""Data parallelism on 4 CPU devices (a subprocess with XLA_FLAGS forcing them): the same fits as on one device."""
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh
    import jaxvi

    assert len(jax.devices()) == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(0)
    out = {}

    def compare(name, model, method, data):
        """The fit on one device, and on four: the data sharded as infer(mesh=mesh) shards them, one compile
        whose program is read for the all-reduce."""
        one = jaxvi.infer(model, method, data, key=jax.random.key(0), progress=False)
        sharded = jaxvi.parallel.shard_data(data, mesh)
        fit = jax.jit(lambda d: (lambda r: (r.objective, r.trace))(
            jaxvi.infer(model, method, d, key=jax.random.key(0), progress=False)))
        compiled = fit.lower(sharded).compile()
        objective, trace = compiled(sharded)
        out[name] = {"objective": [float(one.objective), float(objective)],
                     "trace_max_rel": float(np.max(np.abs(np.asarray(one.trace) - np.asarray(trace))
                                                   / np.abs(np.asarray(one.trace)))),
                     "devices": len(jax.tree_util.tree_leaves(sharded)[0].sharding.device_set),
                     "all_reduce": "all-reduce" in compiled.as_text()}
        return one

    x = rng.normal(size=(400, 3)).astype(np.float32) + rng.integers(0, 3, (400, 1)) * 3.0
    gm = jaxvi.models.gaussian_mixture(3)
    em_gmm = compare("em gmm", gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=30, tol=0.0), x)
    with_mesh = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=30, tol=0.0), x, key=jax.random.key(0),
                            progress=False, mesh=mesh)
    out["mesh="] = [float(em_gmm.objective), float(with_mesh.objective)]
    hmm = jaxvi.models.gaussian_hmm(2)
    seqs = (rng.normal(size=(8, 50, 2)) + np.repeat(rng.integers(0, 2, (8, 5, 1)) * 3.0, 10, axis=1)).astype(np.float32)
    compare("em hmm", hmm.model, jaxvi.EM(m_step=hmm.m_step, max_iter=10, tol=0.0), seqs)
    X = rng.normal(size=(800, 5)).astype(np.float32)
    y = (rng.uniform(size=800) < 1 / (1 + np.exp(-X @ np.arange(5.0)))).astype(np.float32)
    latent = jaxvi.Global({"w": jaxvi.Real((5,))}, lambda p, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["w"])))
    logreg = jaxvi.Model(lambda p, z, d: d["y"] * (d["x"] @ z["w"]) - jax.nn.softplus(d["x"] @ z["w"]), latent,
                         lambda k, d: {})
    compare("svi", logreg, jaxvi.SVI(num_steps=200, batch_size=200, optimizer=optax.adam(1e-2)), {"x": X, "y": y})
    vae = jaxvi.models.vae(2, 5, decoder=jaxvi.nn.mlp((8,)))
    compare("amortized", vae.model, jaxvi.Amortized(encoder=jaxvi.nn.mlp((8,)), num_steps=100, batch_size=40,
                                                   validation=0.0), (X > 0).astype(np.float32))
    topics = rng.dirichlet(np.full(40, 0.2), 3)
    counts = np.stack([rng.multinomial(50, p @ topics) for p in rng.dirichlet(np.full(3, 0.5), 64)])
    docs = jaxvi.models.bag_of_words(counts, np.float32)
    lda = jaxvi.models.lda(docs, 3, 40)
    compare("cavi lda", lda, jaxvi.CAVI(max_iter=8, tol=0.0), docs)
    compare("cavi lda online", lda, jaxvi.CAVI(max_iter=8, batch_size=16), docs)
    errors = []
    for bad in (lambda: jaxvi.infer(gm.model, jaxvi.EM(), x[:398], key=jax.random.key(0), mesh=mesh),
                lambda: jaxvi.infer(gm.model, jaxvi.EM(), x, key=jax.random.key(0), mesh="four devices")):
        try:
            bad()
        except ValueError as err:
            errors.append(str(err))
    out["errors"] = errors
    print(json.dumps(out))
''')


def test_fits_on_four_devices_equal_fits_on_one():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"  # keeps conftest's flags
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("em gmm", "em hmm", "svi", "amortized", "cavi lda", "cavi lda online"):
        fit = out[name]
        assert fit["devices"] == 4 and fit["all_reduce"], (name, fit)        # really split, really reduced
        one, four = fit["objective"]
        assert abs(four - one) <= 1e-5 * abs(one), (name, fit)
        assert fit["trace_max_rel"] <= 1e-5, (name, fit)                     # the same run, step by step
    one, four = out["mesh="]                                                    # infer(mesh=) shards as above
    assert abs(four - one) <= 1e-5 * abs(one)
    assert "split evenly over the mesh's 4 devices" in out["errors"][0]
    assert "expected a jax.sharding.Mesh" in out["errors"][1]


WORKER = textwrap.dedent('''
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2, process_id=int(sys.argv[1]))
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxvi

    pid = int(sys.argv[1])
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 2)) + rng.integers(0, 3, (400, 1)) * 3.0).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    mine = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), x[pid * 200:(pid + 1) * 200])
    gm = jaxvi.models.gaussian_mixture(3)
    result = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=20, tol=0.0), mine, key=jax.random.key(0),
                         progress=False)
    print(json.dumps({"devices": len(jax.devices()), "processes": jax.process_count(),
                      "objective": float(result.objective)}))
''')


def test_two_processes_on_one_machine_fit_as_one():
    """The multi-host path on one machine: jax.distributed with two CPU processes (gloo), each holding half the
    data; both get the fit of all the data in one process."""
    import socket

    import jax
    import numpy as np

    import jaxvi

    with socket.socket() as s:
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), address], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 2)) + rng.integers(0, 3, (400, 1)) * 3.0).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(3)
    alone = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=20, tol=0.0), x, key=jax.random.key(0),
                        progress=False)
    for result in results:
        assert result["devices"] == 2 and result["processes"] == 2
        assert abs(result["objective"] - float(alone.objective)) <= 1e-5 * abs(float(alone.objective))
