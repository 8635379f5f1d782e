"""One optimisation step, in the order of the method: draw a batch, noise it, predict, compare (the loss type,
per-sample weights, mask and prior preservation), step the optimizer, the schedule and the EMA."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from training.engine import distributed
from training.engine.adapters import adapters_disabled
from training.engine.memory import full_recompute
from training.engine.trainer.batches import Batch, draw_batch
from training.engine.trainer.context import StepContext

MAX_GRAD_NORM = 1.0


def train_step(context: StepContext, step: int) -> torch.Tensor:
    """One optimisation step (with its gradient accumulation). Returns the loss as a device tensor:
    reading it back would wait for the device, so the caller does that at its reporting rate only."""
    if context.noise is not context.generator:
        # Seeded from the run's seed and the step: reproducible, and a resumed run draws the same noise.
        context.noise.manual_seed((context.spec.seed * 1_000_003 + step) % 2**63)
    accumulation = max(1, context.spec.gradient_accumulation)
    share = context.share or distributed.Share.of(distributed.SINGLE, context.spec.batch_size, accumulation)
    step_loss = torch.zeros((), device=context.device)
    for micro in range(accumulation):
        # Every rank draws the whole micro-batch (the generators stay in step whatever the rank count)
        # and trains on its rows; each micro-batch's mean loss weighs by its share of the rank's images.
        rows = share.rows(micro)
        with autocast(context), recompute(context):
            batch = draw_batch(context, (step - 1) * accumulation + micro)
            loss = compute_loss(context, batch, rows)
        if loss is None:
            continue
        weight = share.weight(rows)  # type: ignore[arg-type]  # rows is set whenever a loss is
        (loss * weight).backward()
        step_loss += loss.detach() * weight
    step_loss = distributed.mean_over_ranks(share.ranks, step_loss)
    torch.nn.utils.clip_grad_norm_(context.trainable.values(), MAX_GRAD_NORM)
    context.optimizer.step()
    context.scheduler.step()
    context.optimizer.zero_grad(set_to_none=True)
    if context.ema is not None:
        context.ema.step(context.trainable.values())
    return step_loss


def autocast(context: StepContext) -> contextlib.AbstractContextManager[Any]:
    if context.speed.mixed_precision == "bf16":
        return torch.autocast(device_type=context.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def recompute(context: StepContext) -> contextlib.AbstractContextManager[Any]:
    """Swapped blocks need their whole forward recomputed in the backward pass (memory.full_recompute)."""
    return full_recompute() if context.speed.swap_blocks else contextlib.nullcontext()


def compute_loss(context: StepContext, batch: Batch, rows: slice | None) -> torch.Tensor | None:
    """Noise, predict, compare: the family's objective with the spec's loss type, per-sample
    weighting (min-SNR), mask and prior preservation. The noise is drawn for the whole batch and the
    prediction made for `rows` only (this rank's share); None when no row is this rank's."""
    family, spec, settings = context.family, context.spec, context.settings
    noised = family.add_noise(batch.latents, context.noise, settings)
    if rows is None:
        return None
    if rows != slice(0, batch.latents.shape[0]):
        batch, noised = distributed.take_rows(batch, rows), distributed.take_rows(noised, rows)
    prediction = family.predict(context.denoiser, noised, batch.conditioning, settings, source_latents=batch.source)
    loss = reduce_loss(
        elementwise_loss(prediction, noised.target, spec.loss_type, spec.huber_delta),
        mask=batch.mask,
        weights=noised.weights,
    )
    if batch.class_conditioning is not None:
        # Prior preservation: for the class prompt ("a person" instead of "zxq person"), the adapted
        # model must still predict what the base model predicts, so the LoRA stays on its subject.
        with torch.no_grad(), adapters_disabled(context.denoiser):
            base = family.predict(
                context.denoiser,
                noised,
                batch.class_base_conditioning or batch.class_conditioning,
                settings,
                source_latents=batch.source,
            )
        held = family.predict(context.denoiser, noised, batch.class_conditioning, settings, source_latents=batch.source)
        loss = loss + spec.prior_preservation_weight * F.mse_loss(held.float(), base.float())
    return loss


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str, delta: float) -> torch.Tensor:
    prediction, target = prediction.float(), target.float()
    if loss_type == "huber":
        return F.huber_loss(prediction, target, reduction="none", delta=delta)
    if loss_type == "smooth_l1":
        return F.smooth_l1_loss(prediction, target, reduction="none", beta=delta)
    return F.mse_loss(prediction, target, reduction="none")


def reduce_loss(
    errors: torch.Tensor, *, mask: torch.Tensor | None = None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, C, H, W) errors to one number: the mean over each sample's (masked) pixels, weighted per sample."""
    if mask is None:
        per_sample = errors.mean(dim=(1, 2, 3))
    else:
        mask = mask.to(errors.dtype)
        covered = (mask.sum(dim=(1, 2, 3)) * errors.shape[1]).clamp(min=1e-6)
        per_sample = (errors * mask).sum(dim=(1, 2, 3)) / covered
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.dtype)
    return per_sample.mean()
