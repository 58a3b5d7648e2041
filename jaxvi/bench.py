"""``jaxvi bench``: the benchmarks/ suite, side by side with the peers that are installed.

Every benchmark script in a jaxvi checkout's ``benchmarks/`` runs jaxvi and a peer in the same
process tree on the same data and writes JSON with a ``summary`` of ratios (speed-ups, differences).
``run`` executes the chosen scripts ``repeats`` times each (``--quick``: their smoke sizes), skips
one whose peer is not importable with a line that says so, and writes ``bench.json`` and
``bench.md``: per benchmark and summary number, the median and the spread (min, max) over repeats,
with the device, the jax version and the git commit. With ``cache`` (``--cache``), every process keeps its
compiled code on disk (``jaxvi.cache``; JAX peers' too): each benchmark runs once with its cache folder
emptied (cold), then ``repeats`` times from it (warm), and the report gives both.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BENCHMARKS", "run", "scaling"]

# benchmark -> (the peer it compares against, the modules that peer needs, how to install it)
BENCHMARKS = {
    "gmm_em": ("scikit-learn", ("sklearn",), "pip install scikit-learn"),
    "bayes_gmm": ("scikit-learn", ("sklearn",), "pip install scikit-learn"),
    "hmm_em": ("hmmlearn", ("hmmlearn",), "pip install hmmlearn"),
    "svi_logreg": ("NumPyro", ("numpyro",), "pip install numpyro"),
    "vae_digits": ("PyTorch", ("torch",), "pip install torch==2.13.0"),
}
QUICK_ARGS = {"hmm_em": ["--quick", "--skip-long"]}
# on a CPU: the long HMM's EM with the sequential recursion (the parallel scan, meant for accelerators, takes
# about 20 minutes there for 10 iterations over 10^6 steps)
CPU_ARGS = {"hmm_em": ["--long-em", "sequential"]}


def benchmarks_dir() -> Path:
    """The checkout's ``benchmarks/`` folder.

    Raises:
      FileNotFoundError: jaxvi is not installed from a source checkout.
    """
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (folder / "_common.py").exists():
        raise FileNotFoundError(f"jaxvi bench runs the benchmarks/ folder of a jaxvi source checkout; there is none "
                                f"at {folder} (install jaxvi with pip install -e from a clone)")
    return folder


def check_names(names: list[str] | None, repeats: int = 1) -> list[str]:
    """The benchmarks ``run`` runs (all of ``BENCHMARKS`` for none), checked with ``repeats``.

    Raises:
      ValueError: an unknown name, or ``repeats`` not an integer >= 1.
    """
    names = list(BENCHMARKS) if not names else list(names)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"names: expected benchmarks among {sorted(BENCHMARKS)}, got {unknown}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an integer >= 1, got {repeats!r}")
    return names


def run(names: list[str] | None = None, *, quick: bool = False, repeats: int = 1, out_dir: str = "jaxvi-bench",
        without: tuple[str, ...] = (), timeout: float = 3600, cache: str | None = None) -> dict:
    """Runs the benchmarks and writes ``out_dir/bench.json`` and ``out_dir/bench.md``.

    Args:
      names: benchmarks to run (default: all of ``BENCHMARKS``).
      quick: the scripts' smoke sizes.
      repeats: runs of each benchmark; the report gives the median and the spread.
      out_dir: where the reports go.
      without: module names to treat as not installed (to see the skip path).
      timeout: seconds before one run is abandoned.
      cache: a folder for compiled code ("": ``out_dir/cache``); each benchmark's runs share its subfolder, emptied
        before the first (cold) run, and ``repeats`` warm runs follow. None: no cache.

    Returns:
      The JSON written.
    """
    import jax

    names = check_names(names, repeats)
    folder = benchmarks_dir()
    os.makedirs(out_dir, exist_ok=True)
    device = jax.devices()[0]
    kind = device.device_kind
    report = {"device": kind if kind.lower() == device.platform else f"{device.platform} ({kind})", "jax": jax.__version__,
              "commit": _commit(folder), "quick": quick, "repeats": repeats, "cache": cache is not None,
              "benchmarks": {}}
    if cache == "":
        cache = str(Path(out_dir) / "cache")
    for name in names:
        peer, modules, install = BENCHMARKS[name]
        missing = [m for m in modules if m in without or importlib.util.find_spec(m) is None]
        if missing:
            line = f"skipping {name}: its peer {peer} is not installed ({install})"
            print(line, flush=True)
            report["benchmarks"][name] = {"skipped": line}
            continue
        env, labels = dict(os.environ), ["run"] * repeats
        if cache is not None:
            env["JAXVI_CACHE"] = os.path.abspath(Path(cache) / name)
            shutil.rmtree(env["JAXVI_CACHE"], ignore_errors=True)  # the first run compiles everything (cold)
            labels = ["cold"] + ["warm"] * repeats
        runs = []
        for repeat, label in enumerate(labels):
            path = Path(out_dir) / f"{name}_{repeat}.json"
            args = [sys.executable, str(folder / f"{name}.py"), "--json", str(path),
                    "--markdown", str(path.with_suffix(".md"))] + (QUICK_ARGS.get(name, ["--quick"]) if quick else [])
            args += CPU_ARGS.get(name, []) if device.platform == "cpu" and not quick else []
            started = time.perf_counter()
            print(f"running {name} ({repeat + 1}/{len(labels)}){' --quick' if quick else ''}"
                  f"{f', {label} cache' if cache is not None else ''}", flush=True)
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                raise RuntimeError(f"benchmark {name} failed: {tail}")
            with open(path) as f:
                runs.append({"seconds": time.perf_counter() - started, "cache": label, **json.load(f)})
        entry = {"peer": peer, "runs": runs, "summary": _spread([r for r in runs if r["cache"] != "cold"])}
        if cache is not None:
            entry["cold"] = _spread([r for r in runs if r["cache"] == "cold"])
        report["benchmarks"][name] = entry
    with open(Path(out_dir) / "bench.json", "w") as f:
        json.dump(report, f, indent=1)
    with open(Path(out_dir) / "bench.md", "w") as f:
        f.write(_markdown(report))
    print(f"jaxvi bench: the report is in {os.path.abspath(Path(out_dir) / 'bench.md')}", flush=True)
    return report


def check_families(families: list[str] | None) -> list[str]:
    """The families ``scaling`` grows (all of ``benchmarks/scaling.py``'s ``FAMILIES`` for none), checked.

    Raises:
      ValueError: an unknown family.
    """
    spec = importlib.util.spec_from_file_location("jaxvi_scaling_benchmark", benchmarks_dir() / "scaling.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    families = list(script.FAMILIES) if not families else list(families)
    unknown = [f for f in families if f not in script.FAMILIES]
    if unknown:
        raise ValueError(f"names: with --scaling, expected families among {list(script.FAMILIES)}, got {unknown}")
    return families


def scaling(families: list[str] | None = None, *, quick: bool = False, out_dir: str = "jaxvi-bench",
            without: tuple[str, ...] = (), timeout: float = 4 * 3600) -> dict:
    """Runs ``benchmarks/scaling.py``: jaxvi and each peer at growing sizes, written to ``out_dir/scaling.json``,
    ``scaling.md`` and ``scaling.png`` (time against size on log-log axes, where jaxvi overtakes each peer).

    Args:
      families: what to grow (default: all): gmm (N), hmm_t (sequence length), hmm_s (sequences), svi (N with
        minibatches), vae (training steps).
      quick: two small sizes per family.
      out_dir: where the reports go.
      without: module names to treat as not installed (that family is skipped, with a line saying so).
      timeout: seconds before the whole run is abandoned.

    Returns:
      The JSON written.
    """
    folder = benchmarks_dir()
    families = check_families(families)
    os.makedirs(out_dir, exist_ok=True)
    out = Path(out_dir) / "scaling"
    args = [sys.executable, str(folder / "scaling.py"), "--families", *families, "--json", f"{out}.json",
            "--markdown", f"{out}.md", "--plot", f"{out}.png"] + (["--without", *without] if without else [])
    print(f"running scaling ({', '.join(families)}){' --quick' if quick else ''}", flush=True)
    proc = subprocess.run(args + (["--quick"] if quick else []), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"benchmark scaling failed: {tail}")
    print(f"jaxvi bench --scaling: the report is in {os.path.abspath(f'{out}.md')}", flush=True)
    with open(f"{out}.json") as f:
        return json.load(f)


def _flatten(tree, prefix: str = "") -> dict:
    """The numbers of a nested dict, keyed by dotted paths (booleans as 0/1 are left out)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _spread(runs: list[dict]) -> dict:
    """Per summary number: the median, min and max over the runs."""
    flat = [_flatten(r.get("summary", {})) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: {"median": statistics.median(values), "min": min(values), "max": max(values)}
            for k in keys if (values := [f[k] for f in flat if k in f])}


def _markdown(report: dict) -> str:
    lines = [f"# jaxvi bench{' (quick)' if report['quick'] else ''}",
             f"device: {report['device']}; jax {report['jax']}; commit {report['commit']}; "
             f"{report['repeats']} run(s) per benchmark", ""]
    for name, entry in report["benchmarks"].items():
        lines.append(f"## {name}")
        if "skipped" in entry:
            lines += [entry["skipped"], ""]
            continue
        cold = entry.get("cold")
        if cold is None:
            lines += [f"against {entry['peer']}", "", "| number | median | min | max |", "|---|---|---|---|"]
        else:
            lines += [f"against {entry['peer']}; warm: compiled code loaded from the cache, cold: compiled afresh", "",
                      "| number | warm median | warm min | warm max | cold |", "|---|---|---|---|---|"]
        for key, value in entry["summary"].items():
            row = f"| {key} | {value['median']:.4g} | {value['min']:.4g} | {value['max']:.4g} |"
            if cold is not None:
                row += f" {cold[key]['median']:.4g} |" if key in cold else " |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines) + "\n"


def _commit(folder: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
