"""What every benchmark shares: naming the machine, timing compiled calls, running a fit in a fresh process."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import NamedTuple


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine(jax) -> str:
    """The CPU, its cores, and the device JAX runs on."""
    device = jax.devices()[0]
    kind = device.device_kind
    name = kind if kind.lower() == device.platform else f"{device.platform} ({kind})"
    return f"{cpu_model()}, {os.cpu_count()} cores ({platform.machine()}), jax device: {name}"


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")  # tracing, lowering, compiling (or loading from cache)


class CompileClock:
    """The seconds JAX spends tracing, lowering and compiling while the clock is open, from JAX's own
    compilation events: the union of their time spans (nested traces count once), so compile time is
    measured directly, never as "first call minus a repeat". Use: ``with CompileClock() as clock: ...``,
    then ``clock.seconds``; a persistent-cache hit counts the time to load the executable."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []

    def _record(self, event: str, start: float, end: float, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            self.spans.append((start, end))

    def __enter__(self) -> "CompileClock":
        from jax import monitoring

        monitoring.register_event_time_span_listener(self._record)
        return self

    def __exit__(self, *exc) -> None:
        from jax import monitoring

        monitoring.unregister_event_time_span_listener(self._record)

    @property
    def seconds(self) -> float:
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self.spans):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total


class Timing(NamedTuple):
    first_s: float  # the first call, compile included
    run_s: float  # the faster of the later calls: the compiled run
    compile_s: float  # tracing, lowering and compiling during the first call (CompileClock)
    out: object  # the last call's output


def _import_deferred() -> None:
    """Imports every module ``jaxvi._deferred`` holds for its first use (none in a checkout without it, whose
    ``import jaxvi`` imported them)."""
    import importlib

    try:
        deferred = importlib.import_module("jaxvi._deferred")
    except ImportError:
        return
    for module in vars(deferred).values():
        if isinstance(module, deferred._Deferred):
            importlib.import_module(module.__name__)


def timed(fn, repeats: int = 2) -> Timing:
    """Times ``fn``'s first call (its compile time measured directly) and ``repeats`` later calls; every call is
    blocked on. Imports are not timed, no library's: what jaxvi imports at its first use (``jaxvi._deferred``) is
    imported before the clock starts, as ``import jaxvi`` did before it deferred them."""
    import jax

    _import_deferred()
    with CompileClock() as clock:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):  # the machine is shared: the compiled run time is the faster repeat
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t0)
    return Timing(first, min(runs) if runs else first, clock.seconds, out)


def spawn(script: str, args: list[str], timeout: float) -> dict:
    """Runs ``script --child ...`` in a fresh interpreter and returns the JSON its last line prints;
    a failure or a time-out is recorded as ``{"error": ...}``, not raised."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {' '.join(args)}: timed out after {timeout:.0f} s", flush=True)
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        print(f"  {' '.join(args)}: failed: {tail[0]}", flush=True)
        return {"error": tail[0]}
    print(f"  {' '.join(args)}: {time.perf_counter() - t0:.1f} s wall", flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse(parser, quick: dict, tasks: dict):
    """Adds ``--quick``, ``--child-timeout``, ``--json``, ``--markdown`` and the hidden ``--child`` to a
    benchmark's parser, parses, and under ``--quick`` replaces every size left at its default by ``quick``'s."""
    import argparse

    parser.add_argument("--quick", action="store_true", help=f"smoke run with small sizes {quick}")
    parser.add_argument("--child-timeout", type=float, default=1800, help="seconds before one fit is abandoned")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--markdown", default=None, help="write the report here")
    parser.add_argument("--child", choices=sorted(tasks), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for name, value in quick.items():
            if parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)
    return args


def run_child(task, args) -> None:
    """In a child process: runs the task, adds its peak memory, prints its JSON line."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    out = task(args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def write(args, text: str, meta: dict, rows: dict) -> None:
    """Prints the report and writes it (``--markdown``) and the results (``--json``)."""
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**meta, "results": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
