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
import jax, jaxvi


class Shift:  # a class of the user's that the model calls: its method's code is part of the stored fits' key
    def value(self):
        return SHIFT


x = np.random.default_rng(0).normal(size=(60, 2)).astype(np.float32)
gm = jaxvi.models.gaussian_mixture(2)
model = jaxvi.Model(lambda p, z, x: gm.model.log_joint(p, z, x) + Shift().value(), gm.model.latent, gm.model.init)
result = jaxvi.infer(model, jaxvi.EM(m_step=gm.m_step, max_iter=20), x, key=jax.random.key(0), progress=False)
print(json.dumps({"objective": float(result.objective).hex(),
                  "hits": events.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": events.get("/jax/compilation_cache/cache_misses", 0),
                  "loaded": events.get("/jaxvi/stored_executable_loaded", 0)}))
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
    assert cold["misses"] > 0 and cold["hits"] == 0 and cold["loaded"] == 0
    # the fit's three executables (start, loop, final evaluation) load whole, found without tracing; every other
    # compilation is found in JAX's cache: nothing compiles again
    assert warm["loaded"] == 3 and warm["misses"] == 0
    assert warm["hits"] + warm["loaded"] == cold["misses"]
    assert warm["objective"] == cold["objective"]
    # the user's class method edited, nothing else: the fit compiles what its code changed, and its log p(D) is the
    # new model's (60 data, each log-joint 1.0 higher), not the stored fit's
    edited = fit_in_a_new_process(tmp_path / "cache", shift="2.0")
    assert edited["loaded"] < 3 and edited["misses"] > 0
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
