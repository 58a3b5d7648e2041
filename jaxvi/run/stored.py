"""A fit's executables kept on disk whole, found again without tracing: a rerun skips tracing and lowering too.

JAX's persistent compilation cache (``jaxvi.cache``) finds a program by its lowered code, so a later process
still traces and lowers every function before it loads the executable: 0.4-0.8 s per fit on a 2-core CPU,
most of what is left of the compile time once the cache is warm. With the cache on, each executable a fit
compiles (its start, its loop, its final evaluation: ``per_fit`` functions) is also kept in the cache
folder's ``fits/`` under a key computed from what the program is made of, without tracing it:

- the function and the digest of jaxvi's own source files;
- the model and the method's structure: ``jaxvi.run.fingerprint`` digests of their code and constants,
  with two additions for code that cannot be seen by name: a class defined outside installed packages is
  digested with its methods' code, and an installed package whose functions the model calls adds its
  version;
- the abstract arguments: tree structure, shapes, dtypes, weak types and devices (not their values:
  numbers such as a learning rate are traced);
- the compiler options, the jax and jaxlib versions, the device kind, ``XLA_FLAGS`` and JAX's
  configuration.

Two smaller things are kept beside them, so that a warm process traces and compiles nothing before its fit:
that ``check_model`` passed on a model of that digest and arguments of those shapes (``checks/``: ``check_once``),
and values computed once per environment (``values/``: ``remembered``; whether XLA takes jaxvi's compiler options).

A process that finds its key loads the executable (``jax.experimental.serialize_executable``) and runs it
with no tracing at all; one that does not compiles ahead of time (``lower``, then ``compile``, which JAX's
own cache may serve: such an executable is not stored, as XLA's CPU executables loaded from that cache do not
serialise whole) and stores the result. Calls inside a user's trace, arguments spread over
several devices, and programs JAX cannot serialise (closed-over arrays passed as constants) run the
plain jitted function. What a digest cannot see (listed in ``jaxvi.run.fingerprint``: code built from
strings at run time, a global looked up by a computed name, C extensions not installed as packages) is
not in the key: after changing such code, delete the folder.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import pickle
import sys
import threading
import types
import weakref
from typing import Any, Callable

import jax
import numpy as np

from jaxvi.run import fingerprint

__all__ = ["CHECK_REMEMBERED_EVENT", "LOADED_EVENT", "REMEMBERED_EVENT", "call", "check_once", "executable_key",
           "jaxvi_source_digest", "remembered", "set_folder"]

LOADED_EVENT = "/jaxvi/stored_executable_loaded"  # jax.monitoring event: a fit's executable came from disk
REMEMBERED_EVENT = "/jaxvi/stored_value_read"  # a value ``remembered`` came from disk, not computed
CHECK_REMEMBERED_EVENT = "/jaxvi/stored_check_passed"  # ``check_once`` found its check passed before
_FORMAT = "jaxvi stored executable 2"

_folder: str | None = None
_jaxvi_digest: str | None = None
_cache_hits: list[int] = []  # programs JAX's persistent cache has served since the cache was turned on
_model_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _count_cache_hits(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _cache_hits[0] += 1


def set_folder(folder: str | None) -> None:
    """Keeps executables in ``folder/fits`` from now on (None: not at all)."""
    global _folder
    _folder = None if folder is None else os.path.join(folder, "fits")
    if _folder is not None and not _cache_hits:  # counted only once the cache is on, by one listener
        _cache_hits.append(0)
        jax.monitoring.register_event_listener(_count_cache_hits)


def call(jitted, memo: dict, fn: Callable, model, method, args: tuple, kwargs: dict, compiler_options=None):
    """``jitted(method, *args, **kwargs)``, through the executable kept on disk for it when the cache is on.

    ``memo`` holds this process's executables of ``jitted``, by the arguments' abstract signature, so a
    repeated call neither digests nor reads anything."""
    if _folder is None:
        return jitted(method, *args, **kwargs)
    signature = _signature((method, *args), kwargs)
    if signature is None:
        return jitted(method, *args, **kwargs)
    compiled = memo.get(signature)
    if compiled is not None:
        return compiled(method, *args, **kwargs)
    compiled, path = _load_or_compile(jitted, fn, model, method, args, kwargs, signature, compiler_options)
    try:  # a loaded executable's first call: one that cannot run here is removed, and the fit compiled afresh
        out = compiled(method, *args, **kwargs)
    except jax.errors.JaxRuntimeError:
        if path is None:
            raise
        _remove(path)
        compiled = jitted.lower(method, *args, **kwargs).compile()
        out = compiled(method, *args, **kwargs)
    memo[signature] = compiled
    return out


def executable_key(fn: Callable, model, signature, compiler_options) -> str:
    """The hex digest an executable is stored under (see the module docstring)."""
    walk = _StrictWalk()
    treedef, leaves = signature
    walk.value((_FORMAT, f"{fn.__module__}.{fn.__qualname__}", jaxvi_source_digest(), _model_digest(model),
                _structure(treedef), leaves, sorted((compiler_options or {}).items()), _environment()))
    return walk.hexdigest()


def check_once(check: Callable, model, *args) -> None:
    """``check(model, *args)``, a validation that raises on bad input, skipped where the cache is on and a process
    passed it before with a model of the same digest and arguments of the same abstract signature (the key of an
    executable, above): its outcome depends on nothing else, so a rerun that loads its fit whole traces nothing,
    not even the user's log-joint once. A pass is remembered in the cache folder's ``checks/``."""
    signature = None if _folder is None else _signature(args, {})
    key = None
    if signature is not None:
        try:
            key = executable_key(check, model, signature, None)
        except Exception:  # noqa: BLE001 - a value the digest cannot walk: checked every time
            key = None
    path = None if key is None else os.path.join(_folder, "checks", key)
    if path is not None and os.path.exists(path):
        jax.monitoring.record_event(CHECK_REMEMBERED_EVENT)
        return
    check(model, *args)
    if path is not None:
        _write(path, b"")


def remembered(name: str, compute: Callable[[], Any], keep: Callable[[Any], bool] = lambda value: True) -> Any:
    """``compute()``, a value JSON can hold that depends only on ``name`` and this process's environment (versions,
    device, ``XLA_FLAGS``, JAX's configuration), kept in the cache folder's ``values/`` where the cache is on and
    ``keep(value)``, so a later process reads it instead of computing it again (which may mean compiling). A value
    not kept (an answer a passing failure could have given) is computed again by the next process."""
    if _folder is None:
        return compute()
    walk = _StrictWalk()
    walk.value((_FORMAT, name, _environment()))
    path = os.path.join(_folder, "values", walk.hexdigest())
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)["value"]
        jax.monitoring.record_event(REMEMBERED_EVENT)
        return value
    except (OSError, ValueError, KeyError, TypeError):  # absent or damaged: computed (and written) again
        pass
    value = compute()
    if keep(value):
        _write(path, json.dumps({"name": name, "value": value}).encode())
    return value


def _model_digest(model) -> str:
    """The model's digest with the versions of the installed packages its code calls, once per model object (a
    fit's three executables share it)."""
    try:
        return _model_digests[model]
    except (KeyError, TypeError):
        pass
    walk = _StrictWalk()
    walk.value(model)
    digest = walk.hexdigest()
    try:
        _model_digests[model] = digest
    except TypeError:  # a model that cannot be weakly referenced: digested on every call
        pass
    return digest


def _load_or_compile(jitted, fn, model, method, args, kwargs, signature, compiler_options):
    """``(executable, path)``: the stored executable and its file, or one compiled now (and stored) and None."""
    try:
        key = executable_key(fn, model, signature, compiler_options)
    except Exception:  # noqa: BLE001 - a value the digest cannot walk: no key, compile as usual
        key = None
    path = None if key is None else os.path.join(_folder, key[:2], key)
    in_tree = jax.tree_util.tree_structure(((method, *args), kwargs))
    anchors = _anchors(model, in_tree)
    if path is not None and os.path.exists(path):
        try:
            compiled = _load(path, in_tree, anchors, _device(signature))
            jax.monitoring.record_event(LOADED_EVENT)
            return compiled, path
        except Exception:  # noqa: BLE001 - a damaged file: compiled again (and replaced if compiled afresh)
            pass
    hits = _cache_hits[0]
    compiled = jitted.lower(method, *args, **kwargs).compile()
    if path is not None and _cache_hits[0] == hits:  # an executable JAX's cache loaded does not serialise whole
        _store(path, compiled, anchors)
    return compiled, None


def _signature(args: tuple, kwargs: dict):
    """``(treedef, per-leaf (shape, dtype, weak type, device))`` of the arguments, hashable; None where the
    executable cannot be kept: a tracer, an array over several devices, a leaf that is not an array or a number."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    described, device = [], None
    for leaf in leaves:
        if isinstance(leaf, jax.core.Tracer):
            return None
        if isinstance(leaf, jax.Array):
            devices = leaf.sharding.device_set
            if len(devices) != 1 or not leaf.is_fully_addressable:
                return None
            here = next(iter(devices))
            if device is not None and here != device:
                return None
            device = here
            described.append((leaf.shape, str(leaf.dtype), bool(leaf.aval.weak_type), here.id))
        elif isinstance(leaf, (np.ndarray, np.generic)):
            described.append((leaf.shape, str(leaf.dtype), False, None))
        elif isinstance(leaf, (bool, int, float, complex)):
            described.append(((), type(leaf).__name__, True, None))
        else:
            return None
    return treedef, tuple(described)


def _device(signature):
    """The device the arguments are on; for host data alone, the one ``jit`` would put them on."""
    ids = {leaf[3] for leaf in signature[1] if leaf[3] is not None}
    if ids:
        (device_id,) = ids
        return next(d for d in jax.devices() if d.id == device_id)
    default = jax.config.values.get("jax_default_device")
    return default if isinstance(default, jax.Device) else jax.devices()[0]


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _is_leaf(treedef) -> bool:
    return treedef.num_nodes == 1 and treedef.num_leaves == 1


def _structure(treedef) -> Any:
    """A tree structure as nested (node type, node data, children), walkable by a digest (a ``PyTreeDef``'s
    repr hides its functions' code)."""
    if _is_leaf(treedef):
        return "leaf"
    kind, data = treedef.node_data()
    return (kind, data, [_structure(child) for child in treedef.children()])


def _anchors(model, in_tree) -> list:
    """Objects an executable's output structure may hold that cannot be pickled (the model, functions in a
    method's static fields), in a fixed order: they are stored as their place in this list and put back from
    the call that loads the executable, whose key says it has the same ones."""
    anchors, seen = [], set()

    def add(value, depth=0):
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)) or id(value) in seen:
            return
        seen.add(id(value))
        anchors.append(value)
        if depth >= 4:
            return
        if isinstance(value, (tuple, list)):
            items = value
        elif isinstance(value, dict):
            items = value.values()
        elif hasattr(value, "__dict__") and not isinstance(value, (type, types.FunctionType)):
            items = vars(value).values()
        else:
            return
        for item in items:
            add(item, depth + 1)

    add(model)

    def visit(treedef):
        if _is_leaf(treedef):
            return
        node = treedef.node_data()
        if node is not None:
            add(node[1])
        for child in treedef.children():
            visit(child)

    visit(in_tree)
    return anchors


class _Pickler(pickle.Pickler):
    def __init__(self, file, anchors):
        super().__init__(file)
        self.places = {id(a): i for i, a in enumerate(anchors)}

    def persistent_id(self, obj):
        return self.places.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, anchors):
        super().__init__(file)
        self.anchors = anchors

    def persistent_load(self, pid):
        return self.anchors[pid]


def _store(path: str, compiled, anchors: list) -> None:
    """Writes the executable and its output structure atomically; does nothing if JAX cannot serialise it."""
    from jax.experimental.serialize_executable import serialize

    try:
        executable, _, out_tree = serialize(compiled)
        with io.BytesIO() as buffer:
            _Pickler(buffer, anchors).dump((_FORMAT, executable, out_tree, _calls_custom_code(compiled)))
            payload = buffer.getvalue()
    except Exception:  # noqa: BLE001 - constants in the program, an output type defined in a function, ...
        return
    _write(path, payload)


def _write(path: str, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` atomically (a temporary file of this thread's own, then a rename); a folder that
    cannot be written leaves nothing."""
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(payload)
        os.replace(temporary, path)
    except OSError:
        if os.path.exists(temporary):
            os.remove(temporary)


def _load(path: str, in_tree, anchors: list, device):
    from jax.experimental.serialize_executable import deserialize_and_load

    with open(path, "rb") as file:
        form, executable, out_tree, custom = _Unpickler(file, anchors).load()
    if form != _FORMAT:
        raise ValueError(f"not a {_FORMAT}")
    if custom:
        _ready_custom_calls(device.platform)
    return deserialize_and_load(executable, in_tree, out_tree, backend=device.client, execution_devices=[device])


_custom_calls_ready: set = set()


def _calls_custom_code(compiled) -> bool:
    """Whether the compiled program calls a custom call (a kernel outside XLA's own code, e.g. LAPACK's), whose
    loading needs ``_ready_custom_calls``; True where its text cannot be read."""
    try:
        return "custom_call_target=" in compiled.as_text()
    except Exception:  # noqa: BLE001
        return True


def _ready_custom_calls(platform: str) -> None:
    """Sets up the custom calls an executable may call that JAX sets up only while lowering code that uses them:
    on CPUs, its LAPACK kernels (a program with a Cholesky factor loaded into a process that has lowered none
    would call an empty kernel). Lowering one small Cholesky does it, once per process (0.2 s: only for a
    program that calls custom code)."""
    if platform == "cpu" and platform not in _custom_calls_ready:
        jax.jit(jax.numpy.linalg.cholesky).lower(np.eye(1, dtype=np.float32))
        _custom_calls_ready.add(platform)


def _environment() -> tuple:
    """What else decides the compiled code: versions, the device, XLA's flags, JAX's configuration."""
    device = jax.devices()[0]
    config = sorted((name, repr(value)) for name, value in jax.config.values.items() if "cache" not in name)
    return (jax.__version__, _version("jaxlib"), device.platform, device.client.platform_version,
            device.device_kind, jax.device_count(), os.environ.get("XLA_FLAGS", ""), sys.version, config)


def jaxvi_source_digest() -> str:
    """The digest of every Python file of the jaxvi package (computed once per process)."""
    global _jaxvi_digest
    if _jaxvi_digest is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        digest = hashlib.sha256()
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, root).encode() + b"\0")
                    with open(path, "rb") as file:
                        digest.update(file.read())
        _jaxvi_digest = digest.hexdigest()
    return _jaxvi_digest


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(package)
        return str(getattr(module, "__version__", "?"))


class _StrictWalk(fingerprint._Walk):
    """The fingerprint walk, with a class outside installed packages digested with its methods' code, and the
    installed packages whose functions it meets recorded (their versions join the key)."""

    def __init__(self):
        super().__init__()
        self.packages: set[str] = set()

    def hexdigest(self) -> str:
        """The digest of what was walked, with the versions of the installed packages met."""
        self.value([(name, _version(name)) for name in sorted(self.packages)])
        return self.hash.hexdigest()

    def _compound(self, value: Any) -> None:
        if isinstance(value, type) and not _installed(value):
            self.token("class", f"{value.__module__}.{value.__qualname__}")
            self._items("class body", [(name, item) for name, item in vars(value).items()
                                       if isinstance(item, (types.FunctionType, classmethod, staticmethod, property))
                                       or not name.startswith("__")])
            self._parts("bases", *[base for base in value.__bases__ if base is not object])
            return
        if isinstance(value, (classmethod, staticmethod)):
            self._parts("method wrapper", value.__func__)
            return
        if isinstance(value, property):
            self._parts("property", value.fget, value.fset, value.fdel)
            return
        if isinstance(value, types.FunctionType) and fingerprint._is_library(value.__code__.co_filename):
            self.packages.add((value.__module__ or "").split(".")[0])
        elif not isinstance(value, type) and not _installed(type(value)):
            self.value(type(value))  # an instance of a class of the user's (a NamedTuple too): its methods' code
        super()._compound(value)


def _installed(kind: type) -> bool:
    """Whether a class comes from an installed package, the standard library or jaxvi (whose source is in the key)."""
    module = getattr(kind, "__module__", None) or ""
    if module == "jaxvi" or module.startswith("jaxvi.") or module in sys.builtin_module_names:
        return True
    filename = getattr(sys.modules.get(module), "__file__", None)  # none for `python -c` or a notebook
    return filename is not None and fingerprint._is_library(filename)
