"""The optimizer a spec names, over the trained parameters (or parameter groups with their own rates)."""

from __future__ import annotations

from typing import Any

import torch

from training.engine.errors import EngineError
from training.engine.spec import TrainingCallbacks, TrainingSpec


def make_optimizer(
    spec: TrainingSpec, params: list[Any], device: torch.device, callbacks: TrainingCallbacks, *, sharded: bool = False
) -> torch.optim.Optimizer:
    """The spec's optimizer over `params`: tensors, or parameter groups with their own learning rates."""
    name = spec.optimizer.lower()
    if name in ("adamw8bit", "adamw_8bit"):
        if sharded:
            # bitsandbytes' 8-bit kernels take plain tensors, not FSDP's sharded DTensors; the shards'
            # AdamW state is already 1/N of the whole per GPU.
            callbacks.on_log("optimizer adamw8bit does not take sharded (FSDP) weights: using AdamW")
        elif device.type == "cuda":
            try:
                import bitsandbytes as bnb

                return bnb.optim.AdamW8bit(params, lr=spec.learning_rate)
            except ImportError:
                callbacks.on_log("optimizer adamw8bit needs bitsandbytes, which is not installed: using AdamW")
        else:
            callbacks.on_log("optimizer adamw8bit needs a CUDA device: using AdamW on the CPU")
        return torch.optim.AdamW(params, lr=spec.learning_rate, fused=spec.fused_optimizer)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=spec.learning_rate, fused=spec.fused_optimizer)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError as exc:
            raise EngineError("optimizer prodigy needs the prodigyopt package, which is not installed") from exc
        if spec.learning_rate < 0.1:
            callbacks.on_log(
                f"prodigy finds its own step size and is meant to run at learning_rate 1.0; "
                f"{spec.learning_rate} scales it down"
            )
        # The settings its authors recommend for diffusion fine-tuning.
        return Prodigy(
            params,
            lr=spec.learning_rate,
            betas=(0.9, 0.99),
            weight_decay=0.01,
            decouple=True,
            use_bias_correction=True,
            safeguard_warmup=True,
            d_coef=1.0,
        )
    raise EngineError(f"optimizer {spec.optimizer!r} is unknown; choose adamw8bit, adamw or prodigy")
