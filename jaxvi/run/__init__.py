"""The run: the compiled loop, batches and epochs, the trace, stopping rules, held-out patience,
restarts, the fault guard, checkpoints and the progress bar, shared by every method."""
from jaxvi.run.loop import RunState, epoch_order, step_keys
from jaxvi.run.schedule import Change, Never, Schedule, Smoothed

__all__ = ["Change", "Never", "RunState", "Schedule", "Smoothed", "epoch_order", "step_keys"]
