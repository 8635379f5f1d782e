"""The training engine: plain specs in, callbacks and files out. Importable without Django."""

from __future__ import annotations

import logging

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

# Set before anything imports diffusers, which imports torchao (the quantized base weights' library):
# torchao logs a warning for each optional CUDA kernel library its wheel carries that this machine cannot
# load (all of them on a CPU), torch one for each enum torchao registers with its pytree, and diffusers
# one for torchao-serialized checkpoint classes that moved in torchao 0.18. None concerns the weight-only
# formats the engine uses (memory.py).
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)


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
