"""Checkpoints: a run's state written between compiled chunks, and resumed only by a rerun of the same fit.

A checkpoint holds the run state of every restart (``state/...`` members, see ``jaxvi.io``) and the
fingerprint of the fit that wrote it: one entry per thing that changes the result, each a digest
(``jaxvi.run.fingerprint``: the same in a new process for the same code and values) and, where it is
short, the value itself to show in a refusal:

- ``model log_joint``, ``model latent``, ``model init``, ``model log_prior``: the model's functions
  (code, captured values, globals they use) and latent spec;
- ``method``: the method's class; ``method setting <field>`` for every field of its settings: numbers
  (``tol``, ``learning_rate``) by their value, the rest (sizes, ``optimizer`` and its hyperparameters,
  ``m_step``, ``estimator``, ``guide``, ...) by digest;
- ``init_params``, ``data`` (structure, shapes, dtypes and bytes) and ``key`` (implementation and data).

A file whose fingerprint differs is refused with a message naming every entry that differs. A file
that matches is still checked member by member (structure, shapes, dtypes, key implementations) and
for a consistent run state (``check_runs``), so that a damaged or crafted file raises a ``ValueError``
instead of resuming a run that cannot be.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvi.io import Archive, fill, key_impl, save_tree
from jaxvi.result import FAULT_GRADIENT, NO_FAULT
from jaxvi.run.fingerprint import digest
from jaxvi.run.loop import Heldout, RunState
from jaxvi.run.schedule import (STOP_FAULT, STOP_MAX_STEPS, STOP_PATIENCE, STOP_RESOLUTION, STOP_RUNNING,
                                STOP_TOLERANCE)

__all__ = ["FORMAT", "check_runs", "fingerprint", "resume", "save"]

FORMAT = "jaxvi-checkpoint-5"  # 3: the fingerprint covers the model and every method setting; keys name their impl;
#                                 4: the run keeps its last finite state (RunState.kept);
#                                 5: CAVI's Normal-Wishart factors held about their means
_SHOWN = 80  # the longest value shown in a refusal
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def fingerprint(model, method, data: Any, key: jax.Array, init_params: Any) -> dict[str, list]:
    """``{what: [digest, shown]}`` of everything that changes a fit's result (module docstring);
    ``shown`` is the value as text where it is short, else None."""
    entries = {f"model {field.name}": _entry(getattr(model, field.name)) for field in dataclasses.fields(model)}
    entries["method"] = _entry(type(method).__qualname__)
    if dataclasses.is_dataclass(method):
        numbers = getattr(type(method), "numbers", ())
        for field in dataclasses.fields(method):
            value = getattr(method, field.name)
            entries[f"method setting {field.name}"] = _number(value) if field.name in numbers else _entry(value)
    else:
        entries["method settings"] = _entry(method)
    entries["init_params"] = _entry(init_params)
    paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(data)[0])
    entries["data"] = [digest(([jax.tree_util.keystr(p) for p in paths], leaves)),
                       _short(", ".join(f"{a.shape} {a.dtype}" for a in leaves))]
    entries["key"] = [digest(key), f"{key_impl(key)} {np.asarray(jax.random.key_data(key)).tolist()}"]
    return entries


def save(path: str, runs: RunState, fit: dict) -> None:
    """Writes ``runs`` (with a leading restart axis) and the fit's fingerprint to ``path``, atomically."""
    save_tree(path, {"state": runs}, {"format": FORMAT, "fit": fit})


def resume(path: str, like: Callable[[], RunState], fit: dict, max_steps: int, num_data: int) -> RunState:
    """The runs stored at ``path``, in the structure of ``like()`` (arrays or ``jax.ShapeDtypeStruct``s;
    asked for once the file's fingerprint matches ``fit``).

    Raises:
      ValueError: the file is not a readable checkpoint of this format, holds another fit (naming
        what differs: "model log_joint", "method setting tol: 0.001 vs 1e-07", ...), or holds a
        state of another structure, shape or dtype, or an inconsistent one.
    """
    with Archive(path, "checkpoint") as archive:
        if archive.meta.get("format") != FORMAT:
            raise archive.error(f"is not a checkpoint this jaxvi can resume (format {archive.meta.get('format')!r}, "
                                f"expected {FORMAT!r}); delete it or pass another path")
        stored = archive.meta.get("fit")
        if not isinstance(stored, dict):
            raise archive.error("has no fingerprint of its fit; delete it or pass another path")
        differences = _differences(stored, fit)
        if differences:
            raise archive.error(f"holds another fit (the file's vs this call's): {'; '.join(differences)}. Delete it "
                                f"or pass another path")
        runs = fill(like(), archive, "state")
    check_runs(runs, max_steps, num_data, f"checkpoint: {path}")
    return runs


def check_runs(runs: RunState, max_steps: int, num_data: int, where: str) -> None:
    """Raises ValueError unless every restart of ``runs`` is a state the run can reach: ``n_iter`` in
    [0, max_steps], ``done`` exactly when it has a stop reason, a stop at max_steps only there, ``done`` at
    max_steps, ``converged`` exactly for the tolerance and patience stops, a fault exactly for the fault
    stop and at step ``n_iter``, epoch orders that are permutations of the data, skipped steps counted from 0
    with a first fault exactly when there were any, at a step up to ``n_iter``."""
    flags = {"n_iter": runs.n_iter, "done": runs.done, "stop_reason": runs.stop_reason, "converged": runs.converged,
             "fault.kind": runs.fault.kind, "fault.iteration": runs.fault.iteration,
             "skips.count": runs.skips.count, "skips.first.kind": runs.skips.first.kind,
             "skips.first.iteration": runs.skips.first.iteration}
    flags = {name: np.asarray(value).reshape(-1) for name, value in flags.items()}
    for field, expected, ok in _rules(runs, flags, max_steps, num_data):
        if not np.all(ok):
            restart = int(np.argmin(ok))
            got = ", ".join(f"{name}={values[restart]}" for name, values in flags.items())
            raise ValueError(f"{where} field state.{field}: expected {expected}, got {got} (restart {restart})")


def _rules(runs: RunState, flags: dict, max_steps: int, num_data: int) -> list:
    """``(field, what is expected, per-restart booleans)`` of ``check_runs``."""
    n_iter, done, reason = flags["n_iter"], flags["done"], flags["stop_reason"]
    kind, iteration = flags["fault.kind"], flags["fault.iteration"]
    rules = [
        ("n_iter", f"steps in [0, {max_steps}]", (0 <= n_iter) & (n_iter <= max_steps)),
        ("stop_reason", f"a stop reason in [{STOP_RUNNING}, {STOP_RESOLUTION}]",
         (STOP_RUNNING <= reason) & (reason <= STOP_RESOLUTION)),
        ("done", f"True exactly when stop_reason is not {STOP_RUNNING} (running)", done == (reason != STOP_RUNNING)),
        ("done", f"True at n_iter = max_steps = {max_steps}", done | (n_iter < max_steps)),
        ("stop_reason", f"{STOP_MAX_STEPS} (max steps) only at n_iter = {max_steps}",
         (reason != STOP_MAX_STEPS) | (n_iter == max_steps)),
        ("converged", f"True exactly when stop_reason is {STOP_TOLERANCE} or {STOP_PATIENCE}",
         flags["converged"] == np.isin(reason, (STOP_TOLERANCE, STOP_PATIENCE))),
        ("fault.kind", f"a fault kind in [{NO_FAULT}, {FAULT_GRADIENT}], not {NO_FAULT} exactly when stop_reason "
                       f"is {STOP_FAULT}",
         (NO_FAULT <= kind) & (kind <= FAULT_GRADIENT) & ((kind != NO_FAULT) == (reason == STOP_FAULT))),
        ("fault.iteration", "n_iter for a fault, else -1",
         np.where(kind != NO_FAULT, iteration == n_iter, iteration == -1)),
    ]
    skipped, first_kind, first_step = flags["skips.count"], flags["skips.first.kind"], flags["skips.first.iteration"]
    rules += [
        ("skips", f"a count >= 0, with a first fault (a kind in [{NO_FAULT + 1}, {FAULT_GRADIENT}] at a step in [0, "
                  f"n_iter]) exactly when it is above 0 (else kind {NO_FAULT} at step -1)",
         (skipped >= 0) & np.where(skipped > 0, (NO_FAULT < first_kind) & (first_kind <= FAULT_GRADIENT)
                                   & (0 <= first_step) & (first_step <= n_iter),
                                   (first_kind == NO_FAULT) & (first_step == -1))),
    ]
    if runs.order != ():
        train, heldout, current = (np.asarray(a).reshape(len(n_iter), -1) for a in runs.order)
        every = np.sort(np.concatenate([train, heldout], axis=1), axis=1)
        rules.append(("order", f"the training and held-out indices a permutation of the {num_data} data, this "
                               f"epoch's order one of the training indices",
                      np.all(every == np.arange(num_data), axis=1)
                      & np.all(np.sort(current, axis=1) == np.sort(train, axis=1), axis=1)))
    kept = np.asarray(runs.kept.n_iter).reshape(-1)
    rules.append(("kept.n_iter", "the steps taken to the last finite state kept, in [0, n_iter]", (0 <= kept) & (kept <= n_iter)))
    if isinstance(runs.heldout, Heldout):
        rules.append(("heldout.stale", "epochs >= 0", np.asarray(runs.heldout.stale).reshape(-1) >= 0))
    return rules


def _entry(value: Any) -> list:
    return [digest(value), _short(_ADDRESS.sub("", repr(value)))]


def _number(value: Any) -> list:
    """A traced number: by the value the computation sees (e.g. float32 0.001), shown as such; an object of them
    (an estimator, ``Renyi(alpha)``) with each number so."""
    def seen(number):
        return str(np.asarray(number if isinstance(number, jax.Array) else jnp.asarray(number)))
    if value is None:
        shown = "None"
    elif isinstance(value, (int, float, np.number, np.ndarray, jax.Array)):
        shown = seen(value)
    else:
        shown = _ADDRESS.sub("", repr(jax.tree_util.tree_map(seen, value)))
    return [shown, shown]


def _short(text: str) -> str | None:
    return text if len(text) <= _SHOWN else None


def _differences(stored: dict, fit: dict) -> list[str]:
    """What differs between a file's fingerprint and this call's, as "what: file's vs this call's" or
    "what differs" (where a value is too long to show, or shows the same: a function's code)."""
    out = []
    for name in [*fit, *(name for name in stored if name not in fit)]:
        ours, theirs = fit.get(name), stored.get(name)
        if theirs == ours:
            continue
        if ours is None or not isinstance(theirs, list) or len(theirs) != 2:
            out.append(f"{name}: only in one of them")
        elif theirs[1] is not None and ours[1] is not None and theirs[1] != ours[1]:
            out.append(f"{name}: {theirs[1]} vs {ours[1]}")
        else:
            out.append(f"{name} differs")
    return out
