"""The run: the compiled loop, batches and epochs, the trace, stopping rules, held-out patience,
restarts, the fault guard, checkpoints and the progress bar, shared by every method."""
from jaxvi.run.loop import RunState, epoch_order, step_keys
from jaxvi.run.schedule import RESOLUTION_ULPS, STOP_REASONS, Change, Never, Schedule, Smoothed, resolution
from jaxvi.run.stream import Streamed, stream

__all__ = ["Change", "Never", "RESOLUTION_ULPS", "RunState", "STOP_REASONS", "Schedule", "Smoothed", "Streamed",
           "epoch_order", "resolution", "step_keys", "stream"]
