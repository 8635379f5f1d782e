"""Everything one optimisation step touches, gathered once the model and the data are ready."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from training.engine import distributed
from training.engine.data import EpochSampler, PreparedItem, flip_probability
from training.engine.families import Family
from training.engine.families.base import NoiseSettings
from training.engine.spec import TrainingSpec
from training.engine.speed import SpeedOptions
from training.engine.trainer.cache import Cache, cache_on
from training.engine.trainer.setup import Trainable


@dataclass
class StepContext:
    """Everything one optimisation step touches."""

    spec: TrainingSpec
    family: Family
    denoiser: torch.nn.Module
    cache: Cache
    trainable: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    noise: torch.Generator  # the run's generator on a CPU; on a GPU one of its own, reseeded each step
    device: torch.device
    sampler: EpochSampler
    flip_p: float
    settings: NoiseSettings
    speed: SpeedOptions
    ema: Any = None  # diffusers' EMAModel over the trained parameters, when `ema` is on
    text_encoders: dict[str, torch.nn.Module] | None = None  # with trained adapters (train_text_encoder)
    share: distributed.Share | None = None  # this rank's part of each step's global batch; None: all of it


def noise_settings(spec: TrainingSpec) -> NoiseSettings:
    return NoiseSettings(
        noise_offset=spec.noise_offset,
        min_snr_gamma=spec.min_snr_gamma,
        timestep_sampling=spec.timestep_sampling,
        logit_mean=spec.logit_mean,
        logit_std=spec.logit_std,
        sigmoid_scale=spec.sigmoid_scale,
        timestep_shift=spec.timestep_shift,
        guidance_scale=spec.guidance_scale,
        bypass_guidance_embedding=spec.bypass_guidance_embedding,
    )


def noise_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """Where the step's noise is drawn: on a GPU, on the GPU itself (see `train_step`)."""
    return generator if device.type == "cpu" else torch.Generator(device=device)


def step_context(
    spec: TrainingSpec,
    family: Family,
    model: Trainable,
    cache: Cache,
    items: list[PreparedItem],
    held_out: set[int],
    transforms: list,
    generator: torch.Generator,
    device: torch.device,
    share: distributed.Share,
) -> StepContext:
    """What every step reads, the training images' epochs drawn by their repeats (held-out images: none),
    the cache moved onto the device once, the model in training mode."""
    repeats = [0 if index in held_out else item.repeats * spec.repeats for index, item in enumerate(items)]
    # A batch shares one bucket and, for edit pairs, one number of source images (stacked per source).
    groups: list[tuple[int, ...]] = list(cache.buckets)
    if cache.source_means is not None:
        groups = [(*bucket, len(sources)) for bucket, sources in zip(cache.buckets, cache.source_means, strict=True)]
    sampler = EpochSampler(groups, repeats, spec.batch_size, spec.seed)
    if device.type != "cpu":
        cache = cache_on(cache, device)  # the whole dataset's latents and embeddings: drawn from in place
    model.denoiser.train()
    return StepContext(
        spec=spec,
        family=family,
        denoiser=model.denoiser,
        cache=cache,
        trainable=model.parameters,
        optimizer=model.optimizer,
        scheduler=model.scheduler,
        generator=generator,
        noise=noise_generator(generator, device),
        device=device,
        sampler=sampler,
        flip_p=flip_probability(transforms),
        settings=noise_settings(spec),
        speed=model.speed,
        ema=model.ema,
        text_encoders=model.text_encoders,
        share=share,
    )
