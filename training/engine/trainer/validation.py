"""Validation: the held-out images' loss at fixed noise levels and fixed noise, measured with the weights the
user will get."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator

import torch

from training.engine.data import PreparedItem
from training.engine.errors import EngineError
from training.engine.spec import TrainingSpec
from training.engine.trainer.batches import caption_conditioning, source_latents
from training.engine.trainer.context import StepContext
from training.engine.trainer.step import autocast

# Validation measures each held-out image at these noise levels (0 clean, 1 pure noise), each with
# noise fixed by the run's seed, so that two measurements differ only by what the model learned.
VALIDATION_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


@contextlib.contextmanager
def evaluation_weights(context: StepContext) -> Iterator[None]:
    """For validation and samples: the weights the user will get (the EMA when on), every model in eval
    mode, and the global random state left as it was, so that a run resumed from a checkpoint taken
    at this step continues exactly as the uninterrupted one."""
    devices = [context.device] if context.device.type == "cuda" else []
    encoders = list((context.text_encoders or {}).values())
    with torch.random.fork_rng(devices=devices):
        if context.ema is not None:
            context.ema.store(context.trainable.values())
            context.ema.copy_to(context.trainable.values())
        for encoder in encoders:
            encoder.eval()
        try:
            yield
        finally:
            for encoder in encoders:
                encoder.train()
            if context.ema is not None:
                context.ema.restore(context.trainable.values())


@torch.no_grad()
def validation_loss(context: StepContext, indices: list[int]) -> float:
    """The held-out images' loss at fixed noise levels and fixed noise: comparable across steps and
    runs (no sampling noise), so a drop means the model learned something that generalises."""
    cache, family = context.cache, context.family
    was_training = context.denoiser.training
    context.denoiser.eval()
    total, count = 0.0, 0
    levels = len(VALIDATION_LEVELS)
    for index in indices:
        # One forward per image with every noise level in the batch (images may differ in size: buckets).
        latents = family.scale_latents(cache.means[index].unsqueeze(0)).to(context.device)
        conditioning = caption_conditioning(context, [cache.caption_rows[index]] * levels)
        if cache.time_ids is not None:
            conditioning["time_ids"] = cache.time_ids[index].unsqueeze(0).repeat(levels, 1).to(context.device)
        source = None
        if cache.source_means is not None:
            source = [
                latents.repeat(levels, *[1] * (latents.dim() - 1))
                for latents in source_latents(family, [cache.source_means[index]], context.device)
            ]
        fixed = torch.Generator(device="cpu").manual_seed(context.spec.seed + 7919 * index)
        noise = torch.cat([torch.randn(latents.shape, generator=fixed) for _ in VALIDATION_LEVELS]).to(context.device)
        noised = family.add_noise(
            latents.repeat(levels, *[1] * (latents.dim() - 1)),
            fixed,
            context.settings,
            levels=torch.tensor(VALIDATION_LEVELS, device=context.device),
            noise=noise,
        )
        with autocast(context):
            prediction = family.predict(context.denoiser, noised, conditioning, context.settings, source_latents=source)
        errors = (prediction.float() - noised.target.float()).pow(2).flatten(1).mean(dim=1)
        total += float(errors.sum())
        count += levels
    if was_training:
        context.denoiser.train()
    return total / max(1, count)


def validation_indices(spec: TrainingSpec, items: list[PreparedItem]) -> set[int]:
    """The images held out: those marked `validation`, plus a seeded `validation_split` share of the rest."""
    marked = {index for index, item in enumerate(items) if item.validation}
    rest = [index for index in range(len(items)) if index not in marked]
    count = math.ceil(len(rest) * spec.validation_split) if spec.validation_split > 0 else 0
    chosen = marked | set(random.Random(spec.seed).sample(rest, min(count, len(rest))))
    if len(chosen) >= len(items):
        raise EngineError(
            f"validation would hold out all {len(items)} images; lower validation_split or mark fewer images"
        )
    return chosen
