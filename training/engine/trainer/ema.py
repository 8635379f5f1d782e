"""The exponential moving average of the trained weights (`ema`), through diffusers' EMAModel: made, saved
and restored with a checkpoint."""

from __future__ import annotations

from typing import Any

import torch

from training.engine import distributed
from training.engine.errors import EngineError
from training.engine.spec import TrainingSpec


def make_ema(spec: TrainingSpec, trainable: dict[str, torch.nn.Parameter]) -> Any:
    if not spec.ema:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(list(trainable.values()), decay=spec.ema_decay, update_after_step=spec.ema_start_step, foreach=True)


def ema_weights(ema: Any, trainable: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor] | None:
    if ema is None:
        return None
    return dict(zip(trainable, ema.shadow_params, strict=True))


def restore_ema(ema: Any, trainable: dict[str, torch.nn.Parameter], state: dict[str, Any]) -> None:
    weights = state.get("ema")
    if weights is None:
        raise EngineError("the checkpoint was written without EMA weights; it cannot resume an EMA run")
    ema.shadow_params = [distributed.like(p, weights[name]) for name, p in trainable.items()]
    ema.optimization_step = int(state.get("ema_step", 0))
