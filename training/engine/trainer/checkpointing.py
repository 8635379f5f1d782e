"""Checkpoints of a run: written by rank 0 (sharded state gathered first), and resumed only by a run with the
same data and the same settings that shape the weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from training.engine import distributed
from training.engine.checkpoints import latest_valid_checkpoint, load_checkpoint, save_checkpoint
from training.engine.spec import TrainingCallbacks, TrainingSpec
from training.engine.trainer.context import StepContext
from training.engine.trainer.ema import ema_weights, restore_ema
from training.engine.trainer.setup import Trainable


def save_on_main(context: StepContext, ranks: distributed.Ranks, **options: Any) -> Path | None:
    """A checkpoint of whole tensors, written by rank 0 alone: sharded weights and optimizer state are
    gathered first (every rank takes part); the host copies live only for the write. None on other ranks."""
    weights = distributed.full_tensors(context.trainable)
    # Gathered whole only when sharded; a single process's optimizer saves its own state as it is.
    optimizer_state = distributed.optimizer_state(context.optimizer) if ranks.active else None
    averaged = ema_weights(context.ema, context.trainable)
    averaged = distributed.full_tensors(averaged) if averaged is not None else None
    if not ranks.main:
        return None
    return save_checkpoint(
        context.spec.checkpoint_dir,
        weights=weights,
        optimizer=context.optimizer,
        optimizer_state=optimizer_state,
        scheduler=context.scheduler,
        generator=context.generator,
        ema=averaged,
        **options,
    )


# Settings that do not change the weights a run reaches (speed, reporting, cadence of saves).
NOT_IN_FINGERPRINT = {
    "base_model", "output_dir", "images", "pairs", "captioner", "save_every", "max_step_saves_to_keep",
    "sample_every", "sample_steps", "sample_prompts", "resume", "device", "progress_interval_seconds",
    "compile", "channels_last", "attention", "fused_optimizer", "snapshot_every_seconds", "snapshot_every_steps",
}  # fmt: skip


def run_config_fingerprint(spec: TrainingSpec, dataset: str) -> str:
    """Checkpoints resume only a run with the same data and the same settings that shape the weights."""
    from dataclasses import fields

    settings = {
        field.name: repr(getattr(spec, field.name)) for field in fields(spec) if field.name not in NOT_IN_FINGERPRINT
    }
    settings["dataset"] = dataset
    settings["images"] = repr(sorted((image.name, image.repeats, image.validation) for image in spec.images))
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def resume(
    spec: TrainingSpec,
    model: Trainable,
    generator: torch.Generator,
    run_fingerprint: str,
    device: torch.device,
    callbacks: TrainingCallbacks,
) -> tuple[int, torch.Tensor | None]:
    """The step to start after and the smoothed loss there: from the newest valid checkpoint of this run's
    settings (`resume`), which restores the weights, optimizer, schedule, generator and EMA; else 0."""
    if not spec.resume:
        return 0, None
    found = latest_valid_checkpoint(spec.checkpoint_dir, run_fingerprint)
    if found is None:
        return 0, None
    path, start_step = found
    state = load_checkpoint(
        path, parameters=model.parameters, optimizer=model.optimizer, scheduler=model.scheduler, generator=generator
    )  # each rank reads the same files; sharded tensors take their own shard
    if model.ema is not None:
        restore_ema(model.ema, model.parameters, state)
    smoothed = None
    if state.get("smoothed_loss") is not None:
        smoothed = torch.tensor(float(state["smoothed_loss"]), device=device)
    callbacks.on_log(f"resumed from the checkpoint at step {start_step} ({path.name})")
    return start_step, smoothed
