"""Errors the engine raises for problems a user can fix (bad data, bad configuration)."""


class EngineError(Exception):
    """A training or generation request that cannot be carried out as given.

    The message is shown to the user as it is, so it names the problem and what to change.
    """


class TrainingCancelled(Exception):
    """Raised inside the loop when the caller's cancel token fires; not an error."""


class TrainingSuspended(Exception):
    """Raised when the caller asked the run to stop for now (its worker is shutting down): the state is
    saved in a snapshot at `step` (0: training had not begun), so another attempt resumes there."""

    def __init__(self, step: int) -> None:
        super().__init__(f"suspended at step {step}")
        self.step = step

    def __reduce__(self) -> tuple[type, tuple[int]]:  # pickled from a rank to its worker (distributed runs)
        return (TrainingSuspended, (self.step,))


class WorkerGone(Exception):
    """A rank's link to its worker failed, or the worker told it to stop (its lease was lost): the run
    ends at once and writes nothing more."""
