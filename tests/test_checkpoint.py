"""Checkpoints: a fit killed mid-way and rerun with the same arguments resumes and ends where an
uninterrupted fit ends, bit for bit; a checkpoint of any other fit, and a damaged or crafted file, is
refused with a ValueError naming the file and what differs; keys of every PRNG implementation round-trip."""
import ast
import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvi
from jaxvi.io import Archive, check_path, fill, save_tree
from jaxvi.run import checkpoint as checkpoints
from jaxvi.run import loop
from jit_events import compilations

infer_module = sys.modules["jaxvi.infer"]
STEPS = 60_000

MODEL = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxvi

    x = np.random.default_rng(0).normal(1.0, 2.0, size=(300, 2)).astype(np.float32)
    latent = jaxvi.Global({"mu": jaxvi.Real((2,)), "sd": jaxvi.Real((), bijector=jaxvi.positive())},
                          lambda p, z: jnp.sum(jax.scipy.stats.norm.logpdf(z["mu"], 0, 10)) - z["sd"])
    model = jaxvi.Model(lambda p, z, x: jnp.sum(jax.scipy.stats.norm.logpdf(x, z["mu"], z["sd"])), latent,
                        lambda k, d: {})
    method = jaxvi.SVI(num_steps=STEPS, batch_size=30, optimizer=optax.adam(1e-3))
''').replace("STEPS", str(STEPS))


def fit(path=None):
    namespace = {}
    exec(MODEL, namespace)
    return jaxvi.infer(namespace["model"], namespace["method"], namespace["x"], key=jax.random.key(0),
                       progress=False, checkpoint=path, checkpoint_every=None if path is None else 2000)


def test_a_killed_fit_resumes_to_the_uninterrupted_result(tmp_path, optimized_code):
    path = str(tmp_path / "fit.ckpt")
    script = MODEL + f"\njaxvi.infer(model, method, x, key=jax.random.key(0), progress=False, checkpoint={path!r}, " \
                     f"checkpoint_every=2000)\n"
    child = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 300
    while not os.path.exists(path) and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with Archive(path, "checkpoint") as archive:
        done = int(archive.read("state/.n_iter")[0])
    assert 0 < done < STEPS and done % 2000 == 0                    # killed mid-way, after a whole chunk
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
    resumed = fit(path)        # a fresh Model, fresh lambdas, another process wrote the file: the same fit
    uninterrupted = fit()
    assert int(resumed.n_iter) == STEPS
    np.testing.assert_array_equal(resumed.trace, uninterrupted.trace)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.guide_params), jax.tree_util.tree_leaves(uninterrupted.guide_params)):
        np.testing.assert_array_equal(a, b)
    # a finished checkpoint resumes to the same result at once
    again = fit(path)
    np.testing.assert_array_equal(again.trace, uninterrupted.trace)


FINGERPRINTED = textwrap.dedent('''
    import functools
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxvi
    from jaxvi.run.fingerprint import digest

    SCALE = np.arange(3.0)

    def helper(x):
        return jnp.sum(x * SCALE)

    def make(c, power=2):
        def log_joint(params, z, x):
            return helper(x) * c ** power + sum(params[k] for k in sorted(params))
        return log_joint

    values = {"closure": make(1.5), "default": make(1.5, power=3), "optax": optax.adam(1e-2), "set": {"b", "a", "c"},
              "partial": functools.partial(make, 2.0), "zoo model": jaxvi.models.gaussian_mixture(2).model,
              "lambda": lambda x: x + 1, "key": jax.random.key(0, impl="rbg"), "settings": jaxvi.SVI(num_steps=5)}
    digests = {name: digest(value) for name, value in values.items()}
''')


def test_fingerprints_are_stable_across_processes_and_see_code_and_constants():
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another string hash: set orders differ between processes
    out = subprocess.run([sys.executable, "-c", FINGERPRINTED + "print(repr(digests))"], capture_output=True,
                         text=True, check=True, env=env)
    here = {}
    exec(FINGERPRINTED, here)
    assert here["digests"] == ast.literal_eval(out.stdout.strip().splitlines()[-1])    # fresh objects, new process
    digest, make = here["digest"], here["make"]
    changed = {"closure": make(2.5), "default": make(1.5, power=4), "optax": optax.adam(1e-1), "set": {"a", "b"},
               "partial": functools.partial(make, 2.5), "zoo model": jaxvi.models.gaussian_mixture(3).model,
               "lambda": lambda x: x + 2, "key": jax.random.key(1, impl="rbg"), "settings": jaxvi.SVI(num_steps=6)}
    for name, value in changed.items():
        assert digest(value) != here["digests"][name], name
    assert digest(optax.sgd(1e-2)) != here["digests"]["optax"]
    here["SCALE"] = np.arange(3.0) + 1                       # a global that the code uses, through a helper
    assert digest(here["values"]["closure"]) != here["digests"]["closure"]


def test_a_model_reaching_its_code_through_a_module_of_its_own_changes_with_that_module(tmp_path, monkeypatch):
    """``import helper`` and ``helper.log_joint(...)`` in a model: a module global was hashed by its name alone, so
    editing helper.py (its code, or a constant its function reads) left fingerprints and structural equality as
    they were: a warm cache ran the old code, and a checkpoint of the old model resumed under the new one."""
    import importlib

    from jaxvi.equality import Structural
    from jaxvi.run.fingerprint import digest

    helper = tmp_path / "jaxvi_test_helper.py"
    source = ("import jax\nSCALE = 1.0\ndef inner(x):\n    return x * 1.0\n"
              "def log_joint(p, z, x):\n    return jax.scipy.stats.norm.logpdf(inner(x), p[z], SCALE).sum()\n")
    helper.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within the same second would reuse a .pyc
    module = importlib.import_module("jaxvi_test_helper")
    model = jaxvi.Model(lambda p, z, x: module.log_joint(p, z, x), jaxvi.Discrete(2), lambda key, data: jnp.zeros(2))
    before, before_equal = digest(model), Structural((model,))
    for old, new in (("x * 1.0", "x * 2.0"), ("SCALE = 1.0", "SCALE = 2.0")):
        source = source.replace(old, new)
        helper.write_text(source)
        importlib.reload(module)
        assert digest(model) != before and Structural((model,)) != before_equal, new
        before, before_equal = digest(model), Structural((model,))
    assert digest(jaxvi.Model(lambda p, z, x: module.log_joint(p, z, x), jaxvi.Discrete(2),
                              lambda key, data: jnp.zeros(2))) == before  # the same code again: the same digest


# --- one small EM fit and one SVI fit, compiled once for the module; every refusal comes before compiling --

X = np.concatenate([np.random.default_rng(0).normal(-2.0, 1.0, (30, 1)),
                    np.random.default_rng(1).normal(2.0, 1.0, (30, 1))]).astype(np.float32)


def mixture(scale, density=jax.scipy.stats.norm.logpdf):
    """Two components of known ``scale``: params {"logits": (2,), "loc": (2,)} whatever the density."""
    def log_joint(params, z, x):
        return jax.nn.log_softmax(params["logits"])[z] + density(x[0], params["loc"][z], scale)

    def init(key, data):
        return {"logits": jnp.zeros(2), "loc": jax.random.normal(key, (2,))}

    return jaxvi.Model(log_joint, jaxvi.Discrete(2), init)


def m_step(params, data, posterior):
    r = posterior.probs
    n_k = r.sum(0)
    return {"logits": jnp.log(n_k / data.shape[0]), "loc": r.T @ data[:, 0] / n_k}


def m_step_other(params, data, posterior):  # the same, with the weights left where they were
    r = posterior.probs
    return {"logits": params["logits"], "loc": r.T @ data[:, 0] / r.sum(0)}


def m_step_nan(params, data, posterior):  # a bug: the weights become NaN once a component has under 30 data
    n_k = posterior.probs.sum(0)
    return {**m_step(params, data, posterior), "logits": jnp.log(n_k - 30.0)}


MODEL_EM = mixture(1.0)
EM = jaxvi.EM(m_step=m_step, max_iter=30, tol=1e-3)
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def em_fit(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("em") / "fit.ckpt")
    with compiles() as compiled:
        result = jaxvi.infer(MODEL_EM, EM, X, key=KEY, progress=False, checkpoint=path, checkpoint_every=2)
    assert bool(result.converged) and 2 < int(result.n_iter) < EM.max_iter  # stopped by tol=1e-3
    return path, result, compiled


def resume_em(path, model=MODEL_EM, method=EM, data=X, key=KEY, **kwargs):
    return jaxvi.infer(model, method, data, key=key, progress=False, checkpoint=path, **kwargs)


def compiles():
    """The names of jaxvi's compiled parts (``_start``, ``_run``, ``_finish``, ...) XLA compiles inside the
    block (a list filled as they happen; jax's own small ops, such as moving an array to the device, are left out)."""
    return compilations(lambda name: name.startswith("jit(_")
                        and name.removeprefix("jit(").removesuffix(")") in dir(infer_module))


def test_a_chunked_fit_compiles_its_loop_once(em_fit):
    assert em_fit[2].count("jit(_run_restarts)") == 1  # the run state keeps its types from chunk to chunk


def test_the_same_fit_resumes_without_starting_again(em_fit, tmp_path, monkeypatch):
    path, result = em_fit[:2]
    copy = shutil.copy(path, tmp_path / "fit.ckpt")
    started, start = [], infer_module._start
    monkeypatch.setattr(infer_module, "_start", lambda *args: started.append(args[2]) or start(*args))
    with compiles() as compiled:
        again = resume_em(copy)
    assert compiled == [] and all(isinstance(data, jax.core.Tracer) for data in started)  # only its shapes traced
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(result)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change, message", [
    (dict(model=mixture(2.0)), "model log_joint differs"),                         # another captured constant
    (dict(model=mixture(1.0, jax.scipy.stats.laplace.logpdf)), "model log_joint differs"),  # same params, other code
    (dict(method=dataclasses.replace(EM, tol=1e-7)), "method setting tol: 0.001 vs 1e-07"),
    (dict(method=dataclasses.replace(EM, max_iter=31)), "method setting max_iter: 30 vs 31"),
    (dict(method=dataclasses.replace(EM, m_step=m_step_other)), "method setting m_step: <function m_step> vs "
                                                                 "<function m_step_other>"),
    (dict(method=jaxvi.SVI(num_steps=30)), "method: 'EM' vs 'SVI'"),
    (dict(data=X + 1.0), "data differs"),
    (dict(data=X[:50]), r"data: \(60, 1\) float32 vs \(50, 1\) float32"),
    (dict(key=jax.random.key(1)), r"key: threefry2x32 \[0, 0\] vs threefry2x32 \[0, 1\]"),
    (dict(key=jax.random.key(0, impl="rbg")), "key: threefry2x32"),
    (dict(init_params={"logits": jnp.zeros(2), "loc": jnp.array([-1.0, 1.0])}), "init_params"),
])
def test_a_checkpoint_of_another_fit_is_refused_naming_what_differs(em_fit, monkeypatch, change, message):
    path = em_fit[0]
    for name in ("_start", "_start_cheaply"):
        monkeypatch.setattr(infer_module, name, lambda *a, **k: pytest.fail("refused before compiling"))
    with pytest.raises(ValueError, match=f"checkpoint: {path} holds another fit .*{message}"):
        resume_em(path, **change)


def test_bad_checkpoint_arguments_fail_before_compiling(em_fit, tmp_path, monkeypatch):
    path = em_fit[0]
    for name in ("_start", "_start_cheaply", "_run", "_run_cheaply", "_finish", "_finish_cheaply"):
        monkeypatch.setattr(infer_module, name, lambda *a, **k: pytest.fail("the path is checked before compiling"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="checkpoint: cannot write a file at .*a_file/fit.ckpt: Not a directory"):
        resume_em(str(tmp_path / "a_file" / "fit.ckpt"))
    with pytest.raises(ValueError, match="checkpoint: expected a file path, got the directory"):
        resume_em(str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint: expected a file path .* got int"):
        resume_em(3)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]                # no temporary file left behind
    with pytest.raises(ValueError, match="checkpoint_every"):
        resume_em(path, checkpoint_every=0)
    with pytest.raises(ValueError, match="inside jit or vmap"):
        jax.jit(lambda d: resume_em(path, data=d).objective)(X)


def rewrite(source, target, meta=None, **state):
    """A copy of the checkpoint ``source`` with members ``state/.<field>`` replaced (a crafted file)."""
    with np.load(source) as file:
        arrays = {name: file[name] for name in file.files}
    for field, value in state.items():
        name = f"state/.{field}"
        arrays[name] = np.asarray(value, arrays[name].dtype) if not isinstance(value, np.ndarray) else value
    if meta is not None:
        arrays["__meta__"] = np.array(meta)
    with open(target, "wb") as f:
        np.savez(f, **arrays)
    return str(target)


@pytest.mark.parametrize("state, message", [
    (dict(n_iter=[35], done=[False], stop_reason=[0], converged=[False]), r"state.n_iter: expected steps in \[0, 31\]"),
    (dict(n_iter=[-5], done=[False], stop_reason=[0], converged=[False]), r"state.n_iter: expected steps in \[0, 31\]"),
    (dict(n_iter=[31], done=[False], stop_reason=[0], converged=[False]), "state.done: expected True at n_iter = max_steps"),
    (dict(done=[False]), "state.done: expected True exactly when stop_reason is not 0"),
    (dict(stop_reason=[9]), r"state.stop_reason: expected a stop reason in \[0, 5\]"),
    (dict(converged=[False]), "state.converged: expected True exactly when stop_reason is 1 or 4"),
    (dict(**{"fault.kind": [2]}), "state.fault.kind"),
    (dict(n_iter=np.array([3], np.int64)), r"member state/.n_iter: shape \(1,\) and dtype int64 in the file, expected "
                                            r"\(1,\) and int32"),
    (dict(trace=np.zeros((1, 7), np.float32)), r"member state/.trace: shape \(1, 7\)"),
    (dict(**{"key": np.zeros((1, 4), np.uint32)}), r"member state/.key: shape \(1, 4\)"),
])
def test_an_impossible_state_is_refused(em_fit, tmp_path, state, message):
    path = em_fit[0]
    crafted = rewrite(path, tmp_path / "crafted.ckpt", **state)
    with pytest.raises(ValueError, match=f"checkpoint: {crafted} .*{message}"):
        resume_em(crafted)


def test_damaged_files_are_value_errors_naming_the_file(em_fit, tmp_path):
    path, result = em_fit[:2]
    raw = open(path, "rb").read()
    cases = {"truncated": raw[: len(raw) // 2], "empty": b"", "text": b"not a checkpoint\n"}
    with zipfile.ZipFile(path) as archive:  # a bit flipped in the data of a member: its CRC fails
        info = archive.getinfo("state/.trace.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        flipped = bytearray(raw)
        flipped[start + info.file_size - 1] ^= 0x10
        cases["flipped"] = bytes(flipped)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    cases["not json"] = rewrite(path, tmp_path / "json", meta="{not json")
    cases["meta not an object"] = rewrite(path, tmp_path / "list", meta="[1, 2]")
    cases["pickle"] = rewrite(path, tmp_path / "pickle", n_iter=np.array([{"n": 3}], dtype=object))
    cases["old format"] = rewrite(path, tmp_path / "old", meta='{"format": "jaxvi-checkpoint-2", "kinds": {}}')
    expected = {"truncated": "is not a file written by jaxvi", "empty": "is not a file written by jaxvi",
                "text": "is not a file written by jaxvi", "flipped": "member state/.trace: Bad CRC-32",
                "not json": "has malformed metadata: Expecting property name",
                "meta not an object": "has malformed metadata: expected a JSON object",
                "pickle": r"member state/.n_iter: it holds Python objects \(a pickle\)",
                "old format": "is not a checkpoint this jaxvi can resume .*jaxvi-checkpoint-2"}
    for name, message in expected.items():
        file = str(tmp_path / name) if name in ("truncated", "empty", "text", "flipped") else cases[name]
        with pytest.raises(ValueError, match=f"checkpoint: {file} {message}"):
            resume_em(file)
        with pytest.raises(ValueError, match=f"path: {file} "):
            jaxvi.load(file, like=result)


def test_a_faulted_fit_is_not_resumed_by_another_m_step(tmp_path):
    path = str(tmp_path / "fault.ckpt")
    buggy = jaxvi.EM(m_step=m_step_nan, max_iter=30, tol=0.0)
    with pytest.raises(FloatingPointError) as first:
        resume_em(path, method=buggy, checkpoint_every=1)
    iteration = int(first.value.result.diagnostics.fault.iteration)
    with pytest.raises(ValueError, match="method setting m_step: <function m_step_nan> vs <function m_step>"):
        resume_em(path, method=dataclasses.replace(buggy, m_step=m_step))   # the fix: a fresh fit, not the old fault
    with pytest.raises(FloatingPointError) as again:                       # the same bug resumes its own fault
        resume_em(path, method=buggy)
    assert int(again.value.result.diagnostics.fault.iteration) == iteration


def test_the_host_loop_ends_for_any_state():
    runs = infer_module._start(MODEL_EM, EM, jnp.asarray(X), KEY, None)
    calls = []

    def chunk(r, stop):
        calls.append(int(stop))
        assert len(calls) < 5, "the host loop did not end"
        return infer_module._run(MODEL_EM, EM, r, data=jnp.asarray(X), stop=stop)

    max_steps = EM.schedule(len(X)).max_steps
    beyond = runs._replace(n_iter=jnp.array([max_steps + 5], jnp.int32))     # not done, past the end
    out = loop.drive(chunk, beyond, max_steps, progress=False, every=2, after_chunk=lambda r: None)
    assert calls == [] and int(out.n_iter[0]) == max_steps + 5
    out = loop.drive(chunk, runs, max_steps, progress=False, every=20, after_chunk=lambda r: None)
    assert bool(out.done[0]) and len(calls) == 1                              # converges within the first chunk


def test_epoch_orders_must_be_permutations():
    n, train = 6, np.array([[4, 0, 3, 5]])
    heldout, current = np.array([[1, 2]]), np.array([[3, 5, 0, 4]])
    zero = np.zeros(1, np.int32)
    runs = loop.RunState((), None, zero + 2, None, (), (train, heldout, current), (), np.zeros(1, bool),
                         np.zeros(1, bool), zero, jaxvi.Fault(zero - 1, zero, zero - 1, zero - 1),
                         loop.Kept((), None, np.zeros(1), zero + 1), zero,
                         jaxvi.Skips(zero, jaxvi.Fault(zero - 1, zero, zero - 1, zero - 1)))
    checkpoints.check_runs(runs, 10, n, "here")
    with pytest.raises(ValueError, match=r"here field state.skips: expected a count >= 0, with a first fault"):
        checkpoints.check_runs(runs._replace(skips=runs.skips._replace(count=zero + 1)), 10, n, "here")
    with pytest.raises(ValueError, match=r"here field state.kept.n_iter: expected the steps taken to the last finite"):
        checkpoints.check_runs(runs._replace(kept=runs.kept._replace(n_iter=zero + 3)), 10, n, "here")
    for order in [(train, np.array([[1, 1]]), current), (train, heldout, np.array([[3, 5, 0, 1]]))]:
        with pytest.raises(ValueError, match="here field state.order: expected the training and held-out indices"):
            checkpoints.check_runs(runs._replace(order=order), 10, n, "here")


# --- SVI: optimisers and an rbg key ----------------------------------------------------------------------------

SVI = jaxvi.SVI(num_steps=40, optimizer=optax.adam(1e-2))
RBG = jax.random.key(3, impl="rbg")


@pytest.fixture(scope="module")
def svi_fit(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("svi") / "fit.ckpt")
    result = jaxvi.infer(MODEL_EM, SVI, X, key=RBG, progress=False, checkpoint=path, checkpoint_every=10)
    return path, result


def test_an_rbg_key_resumes(svi_fit):
    path, result = svi_fit
    with Archive(path, "checkpoint") as archive:
        assert archive.meta["kinds"]["state/.key"] == "key/rbg"
        assert archive.read("state/.key").shape == (1, 4)                      # rbg's key data, not threefry's (2,)
    with compiles() as compiled:
        again = jaxvi.infer(MODEL_EM, SVI, X, key=RBG, progress=False, checkpoint=path)
    assert compiled == []
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(result)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method, message", [
    (jaxvi.SVI(num_steps=40, optimizer=optax.adam(1e-1)), "method setting optimizer differs"),
    (jaxvi.SVI(num_steps=40, optimizer=optax.sgd(1e-2)), "method setting optimizer differs"),
    (jaxvi.SVI(num_steps=40, optimizer=optax.adam, learning_rate=0.1), "method setting learning_rate: None vs 0.1"),
    (jaxvi.SVI(num_steps=40, optimizer=optax.adam(1e-2), num_particles=2), "method setting num_particles: 1 vs 2"),
    (jaxvi.SVI(num_steps=40, optimizer=optax.adam(1e-2), guide=jaxvi.FullRank()), "method setting guide"),
])
def test_another_optimiser_or_setting_is_refused(svi_fit, method, message):
    path, _ = svi_fit
    with pytest.raises(ValueError, match=message):
        jaxvi.infer(MODEL_EM, method, X, key=RBG, progress=False, checkpoint=path)


# --- files: keys of every implementation, atomic writes, reading only what is needed --------------------------


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_keys_of_every_implementation_round_trip(em_fit, tmp_path, impl):
    result = em_fit[1]
    key = jax.random.key(7, impl=impl)
    tree = {"one": key, "many": jax.random.split(key, 3), "x": jnp.arange(3.0)}
    save_tree(str(tmp_path / "keys"), {"s": tree}, {"format": "test"})
    abstract = jax.eval_shape(lambda: tree)
    with Archive(tmp_path / "keys", "path") as archive:
        back = fill(abstract, archive, "s")
        other = "rbg" if impl != "rbg" else "threefry2x32"
        with pytest.raises(ValueError, match=f"member s/\\['one'\\]: expected a {other} PRNG key, the file holds 'key/{impl}'"):
            fill({**tree, "one": jax.random.key(0, impl=other)}, archive, "s")
    for name in ("one", "many"):
        assert str(jax.random.key_impl(back[name])) == impl
        np.testing.assert_array_equal(jax.random.key_data(back[name]), jax.random.key_data(tree[name]))
    # a Result holding keys saves and loads
    holding = dataclasses.replace(result, params={"theta": result.params, "key": key})
    holding.save(tmp_path / "result.npz")
    loaded = jaxvi.load(tmp_path / "result.npz", like=holding)
    assert str(jax.random.key_impl(loaded.params["key"])) == impl
    np.testing.assert_array_equal(jax.random.key_data(loaded.params["key"]), jax.random.key_data(key))
    np.testing.assert_array_equal(loaded.params["theta"]["loc"], result.params["loc"])


def test_save_cleans_up_after_a_failure(em_fit, tmp_path, monkeypatch):
    result = em_fit[1]
    with pytest.raises(ValueError, match="path: expected a file path, got the directory"):
        result.save(tmp_path)
    target = tmp_path / "fit.npz"
    result.save(target)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        dataclasses.replace(result, objective=result.objective + 1).save(target)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["fit.npz"]                       # no temporary file left behind
    assert float(jaxvi.load(target, like=result).objective) == float(result.objective)   # the old file intact
    assert check_path(str(target), "path") == str(target) and sorted(os.listdir(tmp_path)) == ["fit.npz"]


def zip_bomb(source, target, member, megabytes=64, header_of=None):
    """A copy of ``source`` with ``member`` added (or replaced): an .npy of ``megabytes`` of zeros, deflated to
    about a thousandth; ``header_of`` keeps the header of the replaced member (a header that lies)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if info.filename != member:
                new.writestr(info, old.read(info))
        header = old.read(member)[:128] if header_of else None
    with zipfile.ZipFile(target, "a", compression=zipfile.ZIP_DEFLATED) as new, \
            new.open(member, "w", force_zip64=True) as f:
        if header is None:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (megabytes << 18,)})
        else:
            f.write(header)
        for _ in range(megabytes):
            f.write(bytes(1 << 20))
    return str(target)


def test_load_reads_only_the_members_it_needs(em_fit, tmp_path):
    result = em_fit[1]
    source = tmp_path / "fit.npz"
    result.save(source)
    extra = zip_bomb(source, tmp_path / "extra.npz", "diagnostics/.unused.npy")
    lying = zip_bomb(source, tmp_path / "lying.npz", "trace/.npy", header_of=True)
    assert os.path.getsize(extra) < 1 << 20 and os.path.getsize(lying) < 1 << 20     # 64 MiB inside, < 1 MiB on disk
    for file, message in [(extra, r"holds another structure of diagnostics: missing \[\], extra \['diagnostics/.unused'\]"),
                          (lying, r"member trace/: its header says 124 bytes of data, the file holds \d+")]:
        tracemalloc.start()
        with pytest.raises(ValueError, match=f"path: {file} {message}"):
            jaxvi.load(file, like=result)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 << 20, f"{peak} bytes read for a refused file"


def test_a_result_of_an_older_format_loads_but_not_one_with_normal_wishart_factors(em_fit, tmp_path):
    """Results saved as jaxvi-result-2 load as before; one of a CAVI q with Normal-Wishart factors is refused (the
    file holds their natural parameters, jaxvi-result-3 holds them about their means: read as they are, every
    component's mean would be b m and its scale the wrong matrix, silently)."""
    def as_format_2(path):
        with np.load(path) as file:
            meta = json.loads(str(file["__meta__"]))
        return rewrite(path, str(path) + ".2.npz", meta=json.dumps({**meta, "format": "jaxvi-result-2"}))

    result = em_fit[1]
    result.save(tmp_path / "em.npz")
    old = as_format_2(tmp_path / "em.npz")
    assert float(jaxvi.load(old, like=result).objective) == float(result.objective)
    x = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    fit = jaxvi.infer(jaxvi.models.bayesian_gaussian_mixture(x, 2), jaxvi.CAVI(max_iter=2), x, key=KEY,
                      progress=False)
    fit.save(tmp_path / "cavi.npz")
    assert float(jaxvi.load(tmp_path / "cavi.npz", like=fit).objective) == float(fit.objective)
    old = as_format_2(tmp_path / "cavi.npz")
    with pytest.raises(ValueError, match=r"it was written as jaxvi-result-2, whose Normal-Wishart and Normal-Gamma "
                                         r"factors hold natural parameters; .* fit the model again"):
        jaxvi.load(old, like=fit)


def test_an_abstract_like_receives_the_method_s_numbers_from_the_file(em_fit, tmp_path):
    """``load(like=jax.eval_shape(lambda: jaxvi.infer(...)))``, a like that fitted nothing: the method's numbers (EM's
    tol) come from the file with the rest (they stayed abstract before: ``summary()`` printed a ShapeDtypeStruct for
    tol). A file of jaxvi-result-3, which kept none, loads into a like holding them and refuses an abstract one."""
    result = em_fit[1]
    path = tmp_path / "em.npz"
    dataclasses.replace(result, method=dataclasses.replace(result.method, tol=jnp.float32(2e-3))).save(path)
    like = jax.eval_shape(lambda: jaxvi.infer(MODEL_EM, EM, X, key=KEY, progress=False))
    assert isinstance(like.method.tol, jax.ShapeDtypeStruct)
    loaded = jaxvi.load(path, like=like)
    assert float(loaded.method.tol) == np.float32(2e-3)                       # the file's, not EM's 1e-3
    for got, want in zip(jax.tree_util.tree_leaves(dataclasses.replace(loaded, method=EM)),
                         jax.tree_util.tree_leaves(dataclasses.replace(result, method=EM))):
        np.testing.assert_array_equal(got, want)
    assert "ShapeDtypeStruct" not in loaded.summary()
    with np.load(path) as file:  # as jaxvi-result-3 wrote it: no method members
        arrays = {name: file[name] for name in file.files if not name.startswith("method/")}
        meta = json.loads(str(file["__meta__"]))
    kinds = {name: kind for name, kind in meta["kinds"].items() if not name.startswith("method/")}
    arrays["__meta__"] = np.array(json.dumps({**meta, "format": "jaxvi-result-3", "kinds": kinds}))
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, **arrays)
    old = jaxvi.load(tmp_path / "old.npz", like=result)
    assert float(old.objective) == float(result.objective) and old.method is result.method
    with pytest.raises(ValueError, match=r"written as jaxvi-result-3, which does not keep the method's numbers, and "
                                         r"like's method has none"):
        jaxvi.load(tmp_path / "old.npz", like=like)
