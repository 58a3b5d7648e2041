"""Shared fixtures: small simulated data sets, made once per session.

Most of the suite's time is XLA compiling small fits, not running them, so the tests ask XLA:CPU for
its cheapest code generation: no backend optimisation (``--xla_backend_optimization_level=0``, as jaxvi's
own ``CHEAP_CODE``) and the older elemental emitters instead of the fusion emitters
(``--xla_cpu_use_fusion_emitters=false``). On six small fits (EM, CAVI, HMM, SVI, VAE, LDA) the two take
backend compile time from 31-33 s (XLA's defaults) to 24-25 s (level 0) and 10-12 s (both). jaxvi's
``CHEAP_CODE`` no longer takes the pair, as it compiled some programs into code that never finished
(``jaxvi/run/compiled.py``); the suite keeps it for its time, and a test that checks a fit under jaxvi's own
options runs it in a child without these flags (tests/test_em.py). A third flag,
``--xla_cpu_parallel_codegen_split_count=1``, has LLVM emit each program as one module, not split for threads that
the two test workers leave no core to: four test files under ``pytest -n 2`` took 112-116 s with it and 127-139 s
without (alternated, on an Intel Xeon of 2 cores). Sums may round in another order (a float32 objective can move
in its last digit). The flags are set here, before any test initialises a JAX backend, and reach the subprocesses
the tests start; a flag the caller already gave in XLA_FLAGS wins. XLA ends the process at a flag it does not know
(jaxlib 0.11 dropped the older emitters and their flag), so only the flags this XLA takes are set (``_taken``).
"""
import json
import os
import subprocess
import sys

TEST_FLAGS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
              "xla_cpu_parallel_codegen_split_count": 1}
FLAGS_CHOSEN = "JAXVI_TEST_XLA_FLAGS_CHOSEN"  # set where the flags were chosen: test workers and children inherit it
PROBE = """
import json, sys
from jaxvi.run.compiled import _accepts
print(json.dumps([name for name, value in json.loads(sys.argv[1]).items() if _accepts({name: value})]))
"""


def _taken(flags: dict) -> dict:
    """The flags of ``flags`` this XLA takes. XLA reads XLA_FLAGS once, at its first compile, so each flag is tried
    as a compiler option (jaxvi's own ``_accepts``) in a child (2-4 s, once a test session: the test workers inherit
    the choice)."""
    child = subprocess.run([sys.executable, "-c", PROBE, json.dumps(flags)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if child.returncode != 0:
        raise RuntimeError(f"tests/conftest.py could not ask XLA which flags it takes: {child.stderr[-2000:]}")
    names = json.loads(child.stdout.strip().splitlines()[-1])
    return {name: value for name, value in flags.items() if name in names}


# One thread each for NumPy's and SciPy's OpenBLAS and for OpenMP (scikit-learn), as two test workers share the
# two cores: by default each worker's BLAS and OpenMP start a thread per core, four busy threads on two cores, and the
# peers' reference fits (NumPy EM, scikit-learn) wait on one another. tests/models, tests/test_em.py and
# tests/vi/test_lda.py under ``pytest -n 2``, alternated on an Intel Xeon of 2 cores: 134-188 s (median 152 s, five
# runs) with one thread against 150-174 s (median 163 s, four) by default. Set before NumPy is imported here and in
# the test workers (they inherit this environment); a value the caller set wins.
for _threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

if FLAGS_CHOSEN not in os.environ:
    wanted = {flag: value for flag, value in TEST_FLAGS.items() if flag not in os.environ.get("XLA_FLAGS", "")}
    for flag, value in (_taken(wanted) if wanted else {}).items():
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{flag}={str(value).lower()}").strip()
    os.environ[FLAGS_CHOSEN] = "1"

import gc  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Python's collector of reference cycles, at its default thresholds (700, 10, 10), ran a full collection (every
# object, 0.3 s in a test worker's heap of jaxprs and compiled code) 17-20 times a module, 4.8-5.6 s of the 94-99 s
# that tests/vi/test_cavi.py and tests/vi/test_lda.py take alone, most of it while JAX traces. With young collections
# every 100,000 allocations and full ones kept for the end, the collector took 0.6-0.8 s there, the peak memory of
# test_lda.py stayed 0.85 GB (853 -> 865 MB) and the module ran in 88 s against 99 s.
gc.set_threshold(100_000, 50, 1000)


def _stamp_arviz_daily_warning():
    """ArviZ (test extra) writes a stamp of the day at its first import each day, through a temporary file of one
    fixed name: two test workers importing it at once race on that name, and one fails its collection
    (FileNotFoundError at ``tmp.replace``, seen at midnight). The stamp is written here first, through a temporary
    file of this process's own, so that ArviZ's import finds the day stamped and writes nothing."""
    import datetime
    import importlib.util
    import tempfile

    if importlib.util.find_spec("arviz") is None or importlib.util.find_spec("platformdirs") is None:
        return
    from platformdirs import user_cache_dir  # ArviZ's dependency: where it keeps the stamp

    folder, name = user_cache_dir("arviz", "arviz"), None
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False) as f:
            name = f.name
            f.write(datetime.date.today().isoformat())
        os.replace(name, os.path.join(folder, "daily_warning"))
    except OSError:  # a folder that cannot be written: ArviZ's import fails there alike, in its tests only
        if name is not None and os.path.exists(name):
            os.remove(name)


_stamp_arviz_daily_warning()

# The modules of most test time, longest first (seconds summed over a module's tests under ``pytest -n 2``, session
# 38; test_cli.py's as CI runs it, with the demo's report made by ``make demo``): xdist's ``--dist loadscope`` hands
# each worker the next module in collection order, so a long module collected last (the vi/ modules come after the
# rest) kept one worker busy while the other had nothing left. Modules not named here take 41 s or less.
HEAVY_MODULES = ("tests/vi/test_cavi.py",             # 95 s
                 "tests/vi/test_lda.py",              # 91 s
                 "tests/vi/test_svi.py",              # 88 s
                 "tests/models/test_hmm.py",          # 83 s
                 "tests/vi/test_iwae_estimators.py",  # 77 s
                 "tests/test_streaming.py",           # 76 s
                 "tests/test_parallel.py",            # 61 s
                 "tests/vi/test_amortized.py",        # 61 s
                 "tests/exact/test_chain.py",         # 54 s
                 "tests/test_properties.py",          # 50 s
                 "tests/test_float32.py",             # 49 s
                 "tests/test_cli.py",                 # 48 s (117 s where it runs the quick demo itself)
                 "tests/test_examples.py",            # 46 s
                 "tests/vi/test_factorial_hmm.py")    # 43 s


def pytest_collection_modifyitems(config, items):
    """``HEAVY_MODULES`` first, in that order; every other test keeps its place after them (a stable sort)."""
    rank = {module: i for i, module in enumerate(HEAVY_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture
def optimized_code():
    """For a test whose fits run long and compile little: jaxvi compiles them with its own options
    (``jaxvi.compiler_options()``: optimised code) where the suite's XLA_FLAGS ask for level 0 (see the module's
    docstring), which jaxvi otherwise keeps. XLA read XLA_FLAGS at its first compile; a program's own compiler options
    override them, so only jaxvi's choice of options (``_cpu_code``, cached) reads the flags without the level. A test's
    own ``jit`` takes ``compiler_options=jaxvi.compiler_options()`` for the same code, and a child process started in
    the test inherits these flags. Alone on the 2-core Intel Xeon, level 0 against this: tests/models/
    test_bernoulli_mixture.py (77 EM iterations of 20 L-BFGS steps each) 22.5 s -> 10.4 s; the six bound estimates
    over 4,000 keys of tests/vi/test_iwae_estimators.py 26.1 s -> 18.1 s; test_float32.py's seven fits 23.3 s ->
    13.5 s; the killed and resumed SVI fit of test_checkpoint.py 14.7 s -> 10.2 s. A test that compiles more than it
    runs is slower so (CAVI's fits from eight keys of 500 iterations: 14.5 s -> 16.0 s) and keeps level 0."""
    from jaxvi.run import compiled

    level = f"--{compiled.OPTIMIZATION_LEVEL}="
    flags = " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split() if not flag.startswith(level))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XLA_FLAGS", flags)
        compiled._cpu_code.cache_clear()
        yield
    compiled._cpu_code.cache_clear()


@pytest.fixture(scope="session")
def random_effects():
    """``(model, x)``: a random-effects model, mu ~ N(0, 5^2) global, b_i ~ N(mu, 1) per datum, x_i ~ N(b_i, 0.5^2),
    and 30 data (float32)."""
    import jax

    import jaxvi

    norm = jax.scipy.stats.norm
    x = np.random.default_rng(1).normal(1.0, 1.2, 30).astype(np.float32)
    latent = {"mu": jaxvi.Global(jaxvi.Real(()), lambda params, mu: norm.logpdf(mu, 0.0, 5.0)), "b": jaxvi.Real(())}
    model = jaxvi.Model(lambda params, z, x: norm.logpdf(z["b"], z["mu"], 1.0) + norm.logpdf(x, z["b"], 0.5), latent,
                        lambda key, data: {})
    return model, x


@pytest.fixture(scope="session")
def blobs():
    """Four Gaussian clusters in 3-D, 500 points each, of different spreads (float64 NumPy)."""
    rng = np.random.default_rng(0)
    centers = [-3.0, 0.0, 3.0, 6.0]
    return np.concatenate([rng.normal(c, 1 + 0.3 * i, (500, 3)) for i, c in enumerate(centers)])
