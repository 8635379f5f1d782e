"""Micro-batches drawn from the cache: images from the epoch sampler, flips, caption dropout, latent samples,
and the captions' conditioning (through the text encoders while those train)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from training.engine.trainer.context import StepContext


@dataclass
class Batch:
    latents: torch.Tensor
    conditioning: dict[str, torch.Tensor]  # encoded captions (through trained text encoders when those train)
    source: list[torch.Tensor] | None = None  # an edit pair's conditioning images, one (B, C, h, w) each
    mask: torch.Tensor | None = None
    class_conditioning: dict[str, torch.Tensor] | None = None
    # The class prompt as the untouched text encoders encode it: the base model's input (equal to
    # class_conditioning unless the text encoders train).
    class_base_conditioning: dict[str, torch.Tensor] | None = None


def caption_conditioning(context: StepContext, rows: list[int], *, frozen: bool = False) -> dict[str, torch.Tensor]:
    """The encoded captions of these prompt rows (row 0: the unconditional input), on the device: from
    the cache, or, while the text encoders train, through them, so their adapters get gradients
    (`frozen`: from the cache all the same, as the untouched encoders encoded them)."""
    cache, device = context.cache, context.device
    if frozen or context.text_encoders is None or cache.prompt_tokens is None:
        return {key: torch.stack([value[row] for row in rows]).to(device) for key, value in cache.prompts.items()}
    index = torch.tensor(rows)
    encoded = context.family.encode_tokens(
        {key: value[index.to(value.device)] for key, value in cache.prompt_tokens.items()}, context.text_encoders
    )
    if context.family.zeros_for_empty_prompt:
        # The pipeline feeds zeros, not the encoded empty caption, for "no prompt" (SDXL).
        keep = (index != 0).to(device)
        encoded = {
            key: value * keep.to(value.dtype).view(-1, *[1] * (value.dim() - 1)) for key, value in encoded.items()
        }
    return encoded


def draw_batch(context: StepContext, number: int) -> Batch:
    """Micro-batch `number`: its images from the epoch sampler; flips and caption dropout drawn on the
    host from the run's generator; the latent samples from the noise generator, on the cache's device."""
    cache, spec, generator = context.cache, context.spec, context.generator
    noise = context.noise
    chosen = context.sampler.batch(number)
    latents, sources, rows, masks, time_ids, class_rows = [], [], [], [], [], []
    for index in chosen:
        flip = cache.flipped_means is not None and float(torch.rand((), generator=generator)) < context.flip_p
        mean = (cache.flipped_means if flip else cache.means)[index]  # type: ignore[index]
        std = (cache.flipped_stds if flip else cache.stds)[index]  # type: ignore[index]
        latents.append(mean + std * torch.randn(mean.shape, generator=noise, device=noise.device))
        if cache.source_means is not None:
            sources.append((cache.flipped_source_means if flip else cache.source_means)[index])  # type: ignore[index]
        if cache.masks is not None:
            masks.append((cache.flipped_masks if flip else cache.masks)[index])  # type: ignore[index]
        if cache.time_ids is not None:
            time_ids.append((cache.flipped_time_ids if flip else cache.time_ids)[index])  # type: ignore[index]
        dropped = (
            spec.caption_dropout_rate > 0 and float(torch.rand((), generator=generator)) < spec.caption_dropout_rate
        )
        rows.append(0 if dropped else cache.caption_rows[index])
        if cache.class_rows is not None:
            class_rows.append(cache.class_rows[index])
    device = context.device

    def conditioning_for(selected: list[int], *, frozen: bool = False) -> dict[str, torch.Tensor]:
        values = caption_conditioning(context, selected, frozen=frozen)
        if time_ids:
            values["time_ids"] = torch.stack(time_ids).to(device)
        return values

    return Batch(
        latents=context.family.scale_latents(torch.stack(latents)).to(device),
        conditioning=conditioning_for(rows),
        source=source_latents(context.family, sources, device) if sources else None,
        mask=torch.stack(masks).to(device) if masks else None,
        class_conditioning=conditioning_for(class_rows) if class_rows else None,
        class_base_conditioning=conditioning_for(class_rows, frozen=True) if class_rows else None,
    )


def source_latents(family: Any, sources: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The batch's conditioning images, as the family's predict takes them: one (B, C, h, w) per source, each in
    the denoiser's latent space (`sources`: one cached (sources, C, h, w) per image of the batch)."""
    stacked = torch.stack(sources)  # (B, sources, C, h, w)
    return [family.scale_latents(stacked[:, index]).to(device) for index in range(stacked.shape[1])]
