"""``jaxvi.cache``: a second process loads the fits the first compiled, from disk, and gets the same bits."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxvi

FIT = """
import json, sys
import numpy as np
from jax._src import monitoring
events = {}
monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
traced = []  # the functions JAX traced, by name
monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: traced.append(kw.get("fun_name")) if name.endswith("jaxpr_trace_duration") else None)
import jax, jaxvi


class Shift:  # a class of the user's that the model calls: its method's code is part of the stored fits' key
    def value(self):
        return SHIFT


x = np.random.default_rng(0).normal(size=(60, 2)).astype(np.float32)
gm = jaxvi.models.gaussian_mixture(2)


def shifted_log_joint(p, z, x):
    return gm.model.log_joint(p, z, x) + Shift().value()


model = jaxvi.Model(shifted_log_joint, gm.model.latent, gm.model.init)
result = jaxvi.infer(model, jaxvi.EM(m_step=gm.m_step, max_iter=20), x, key=jax.random.key(0), progress=False)
out = {"objective": float(result.objective).hex(),
       "hits": events.get("/jax/compilation_cache/cache_hits", 0),
       "misses": events.get("/jax/compilation_cache/cache_misses", 0),
       "loaded": events.get("/jaxvi/stored_executable_loaded", 0),
       "read": events.get("/jaxvi/stored_value_read", 0),
       "checks_passed_before": events.get("/jaxvi/stored_check_passed", 0),
       "log_joint_traced": traced.count("shifted_log_joint")}
try:  # data of another shape are checked, whatever passed before
    jaxvi.infer(model, jaxvi.EM(m_step=gm.m_step, max_iter=20), x[:, :, None], key=jax.random.key(0), progress=False)
except ValueError as err:
    out["other_shape"] = str(err)
print(json.dumps(out))
"""


def fit_in_a_new_process(folder, shift="1.0"):
    env = {**os.environ, "JAXVI_CACHE": str(folder)}
    script = FIT.replace("return SHIFT", f"return {shift}")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_compiled_fit_from_the_cache_and_changed_code_compiles_anew(tmp_path):
    cold = fit_in_a_new_process(tmp_path / "cache")
    warm = fit_in_a_new_process(tmp_path / "cache")
    assert cold["misses"] > 0 and cold["hits"] == 0 and cold["loaded"] == 0 and cold["read"] == 0
    assert cold["checks_passed_before"] == 0 and cold["log_joint_traced"] > 0
    # the fit's three executables (start, loop, final evaluation) load whole, found without tracing; the model's
    # check passed before on these shapes; every other compilation is found in JAX's cache (or, for XLA's answer
    # to jaxvi's compiler options where a program asks for them, read from the folder): nothing compiles again, and
    # the log-joint is never traced
    assert warm["loaded"] == 3 and warm["misses"] == 0 and warm["checks_passed_before"] == 1
    assert warm["hits"] + warm["loaded"] + warm["read"] == cold["misses"]
    assert warm["log_joint_traced"] == 0
    assert warm["objective"] == cold["objective"]
    for run in (cold, warm):
        assert "a Gaussian mixture expects one (N, D) array, got (60, 2, 1)" in run["other_shape"]
    # the user's class method edited, nothing else: the fit compiles what its code changed, and its log p(D) is the
    # new model's (60 data, each log-joint 1.0 higher), not the stored fit's
    edited = fit_in_a_new_process(tmp_path / "cache", shift="2.0")
    assert edited["loaded"] < 3 and edited["misses"] > 0
    assert edited["checks_passed_before"] == 0 and edited["log_joint_traced"] > 0  # a new model is checked
    np.testing.assert_allclose(float.fromhex(edited["objective"]), float.fromhex(cold["objective"]) + 60.0, rtol=1e-6)
    # damaged files are not loaded: the fit compiles again (here from JAX's cache), the same bits as the cold fit
    for stored in (tmp_path / "cache" / "fits").rglob("*"):
        if stored.is_file():
            stored.write_bytes(stored.read_bytes()[:100])
    damaged = fit_in_a_new_process(tmp_path / "cache")
    assert damaged["loaded"] == 0 and damaged["objective"] == cold["objective"]


def test_a_cache_folder_that_cannot_be_made_is_refused_with_its_name(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"path: expected a folder that can be made and written, got .*a_file"):
        jaxvi.cache(tmp_path / "a_file" / "cache")
    with pytest.raises(ValueError, match=r"path: expected a folder path \(str or os.PathLike\) or None, got 3"):
        jaxvi.cache(3)


def test_a_value_remembered_in_the_folder_is_read_by_later_calls_not_computed(tmp_path, monkeypatch):
    """``stored.remembered`` computes a value once per cache folder; ``compiler_options`` keeps XLA's answer to
    jaxvi's options there (a process that reads it compiles nothing to ask)."""
    from jaxvi.run import compiled, stored

    computed = []

    def compute():
        computed.append(1)
        return {"accepted": True}

    try:
        stored.set_folder(str(tmp_path))
        assert stored.remembered("a fact", compute) == {"accepted": True} and len(computed) == 1
        assert stored.remembered("a fact", compute) == {"accepted": True} and len(computed) == 1  # read, not computed
        assert stored.remembered("another fact", compute) == {"accepted": True} and len(computed) == 2
        (path,) = [p for p in (tmp_path / "fits" / "values").iterdir() if b"another" not in p.read_bytes()]
        path.write_bytes(b"{damaged")
        assert stored.remembered("a fact", compute) == {"accepted": True} and len(computed) == 3  # computed afresh
        assert stored.remembered("a fact", compute) == {"accepted": True} and len(computed) == 3
        monkeypatch.setenv("XLA_FLAGS", "")
        compiled._cpu_code.cache_clear()
        assert compiled.compiler_options() == compiled.CPU_CODE  # XLA asked, its answer kept
        compiled._cpu_code.cache_clear()
        monkeypatch.setattr(compiled, "_accepts", lambda options: pytest.fail("asked XLA again"))
        assert compiled.compiler_options() == compiled.CPU_CODE  # read
        refusals = []
        for _ in range(2):  # a refusal is not kept: each process asks again
            assert stored.remembered("refused", lambda: refusals.append(1) or False, keep=bool) is False
        assert len(refusals) == 2
    finally:
        stored.set_folder(None)
        monkeypatch.undo()
        compiled._cpu_code.cache_clear()
    assert stored.remembered("a fact", compute) == {"accepted": True} and len(computed) == 4  # no folder: computed
    assert not compiled._accepts({"xla_no_such_option": True}) and compiled._accepts(compiled.CPU_CODE)


def test_a_model_check_remembered_never_stands_for_the_initial_parameters_values(tmp_path):
    """The check remembered in the folder is the abstract one (shapes and dtypes); the values of ``init_params`` are
    checked on every call: non-finite ones of the shapes that passed are refused as before."""
    import jax
    import jax.numpy as jnp

    from jaxvi.run import stored

    x = np.random.default_rng(0).normal(size=(60, 2)).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(2)
    init = jax.jit(gm.model.init)(jax.random.key(0), x)
    fit = lambda params: jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=2), x,  # noqa: E731
                                     key=jax.random.key(0), progress=False, init_params=params)
    try:
        stored.set_folder(str(tmp_path))
        fit(init)
        assert len(list((tmp_path / "fits" / "checks").iterdir())) == 1
        with pytest.raises(ValueError, match=r"init_params\.logits: expected finite values, got -inf at index \(1,\)"):
            fit(init._replace(logits=init.logits.at[1].set(-jnp.inf)))
    finally:
        stored.set_folder(None)
