"""The training engine: plain specs in, callbacks and files out. Importable without Django."""

from __future__ import annotations

from training.engine.errors import EngineError, TrainingCancelled, TrainingSuspended
from training.engine.spec import (
    DatasetImage,
    DatasetPair,
    Progress,
    SilentCallbacks,
    TrainingCallbacks,
    TrainingResult,
    TrainingSpec,
)

__all__ = [
    "DatasetImage",
    "DatasetPair",
    "EngineError",
    "Progress",
    "SilentCallbacks",
    "TrainingCallbacks",
    "TrainingCancelled",
    "TrainingResult",
    "TrainingSpec",
    "TrainingSuspended",
    "quiet_libraries",
    "train",
]


def quiet_libraries() -> None:
    """Progress bars and advice from diffusers and transformers are noise in a worker's log."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def train(spec: TrainingSpec, callbacks: TrainingCallbacks) -> TrainingResult:
    """Train on the spec's dataset and write the weights under spec.output_dir; EngineError on bad input."""
    from training.engine.trainer import train as run

    quiet_libraries()
    return run(spec, callbacks)
