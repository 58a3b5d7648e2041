"""The XLA compilations made inside a block, from JAX's monitoring events (a helper for tests, not tests:
import it as ``jit_events`` from a test in this folder)."""
import contextlib

import jax

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # JAX's event, once per XLA compilation


@contextlib.contextmanager
def compilations(keep=lambda name: True):
    """The names of the functions XLA compiles inside the block for which ``keep(name)`` holds (a list
    filled as they happen)."""
    events = []

    def listen(event, duration, fun_name="", **kwargs):
        if event == BACKEND_COMPILE and keep(fun_name):
            events.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
