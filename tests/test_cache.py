"""``jaxvi.cache``: a second process loads the fits the first compiled, from disk, and gets the same bits."""
import json
import os
import subprocess
import sys

import pytest

import jaxvi

FIT = """
import json, sys
import numpy as np
from jax._src import monitoring
events = {}
monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
import jax, jaxvi
x = np.random.default_rng(0).normal(size=(60, 2)).astype(np.float32)
gm = jaxvi.models.gaussian_mixture(2)
result = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, max_iter=20), x, key=jax.random.key(0), progress=False)
print(json.dumps({"objective": float(result.objective).hex(),
                  "hits": events.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": events.get("/jax/compilation_cache/cache_misses", 0)}))
"""


def fit_in_a_new_process(folder):
    env = {**os.environ, "JAXVI_CACHE": str(folder)}
    out = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_compiled_fit_from_the_cache(tmp_path):
    cold = fit_in_a_new_process(tmp_path / "cache")
    warm = fit_in_a_new_process(tmp_path / "cache")
    assert cold["misses"] > 0 and cold["hits"] == 0
    assert warm["hits"] == cold["misses"] and warm["misses"] == 0  # nothing compiled again
    assert warm["objective"] == cold["objective"]


def test_a_cache_folder_that_cannot_be_made_is_refused_with_its_name(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"path: expected a folder that can be made and written, got .*a_file"):
        jaxvi.cache(tmp_path / "a_file" / "cache")
    with pytest.raises(ValueError, match=r"path: expected a folder path \(str or os.PathLike\) or None, got 3"):
        jaxvi.cache(3)
