"""The training loop shared by every family, in the order of the method: prepare the dataset, cache
latents and embeddings, add the adapter, then noise / predict / loss / step, with checkpoints,
validation, samples and export along the way."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from contract.parameters import GPUS_AND_SWAP
from training.engine import distributed
from training.engine.adapters import adapter_config
from training.engine.base_models import resolve_family
from training.engine.checkpoints import latest_valid_checkpoint, load_checkpoint, save_checkpoint
from training.engine.data import (
    EpochSampler,
    PreparedItem,
    alpha_mask,
    apply_transforms,
    bucket_crop,
    caption_for,
    dataset_fingerprint,
    decode_min_side,
    fit_to_bucket,
    flip_probability,
    make_buckets,
    nearest_bucket,
    open_upright,
    to_tensor_array,
    validate_transforms,
    with_trigger,
)
from training.engine.errors import EngineError, TrainingCancelled, TrainingSuspended
from training.engine.export import export_weights
from training.engine.families import Family, family_class
from training.engine.families.base import NoiseSettings
from training.engine.generate import load_pipeline, pick_device, run_pipeline
from training.engine.memory import BlockSwap, full_recompute, place_denoiser, repeated_blocks
from training.engine.spec import (
    LORA_TARGETS,
    LORA_TYPES,
    LOSS_TYPES,
    LR_SCHEDULERS,
    TIMESTEP_SAMPLINGS,
    TRAINING_TYPES,
    TrainingCallbacks,
    TrainingResult,
    TrainingSpec,
)
from training.engine.speed import SpeedOptions, apply_after_adapter, apply_before_adapter, resolve_speed

MAX_GRAD_NORM = 1.0
LOSS_SMOOTHING = 0.05  # weight of the newest step in the reported smoothed loss
# Validation measures each held-out image at these noise levels (0 clean, 1 pure noise), each with
# noise fixed by the run's seed, so that two measurements differ only by what the model learned.
VALIDATION_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class Cache:
    """What the denoiser trains on, computed once: latent distributions and prompt embeddings."""

    means: list[torch.Tensor]
    stds: list[torch.Tensor]
    flipped_means: list[torch.Tensor] | None
    flipped_stds: list[torch.Tensor] | None
    source_means: list[torch.Tensor] | None
    flipped_source_means: list[torch.Tensor] | None
    prompts: dict[str, torch.Tensor]  # row 0 is the unconditional input, used for caption dropout
    caption_rows: list[int]
    buckets: list[tuple[int, int]]
    masks: list[torch.Tensor] | None = None  # (1, h, w) loss weights at latent size (masked loss)
    flipped_masks: list[torch.Tensor] | None = None
    time_ids: list[torch.Tensor] | None = None  # SDXL: original size, crop and target size per image
    flipped_time_ids: list[torch.Tensor] | None = None
    class_rows: list[int] | None = None  # prior preservation: each caption with the class word for the trigger
    prompt_tokens: dict[str, torch.Tensor] | None = None  # token ids per text encoder, when those are trained


@dataclass
class Batch:
    latents: torch.Tensor
    conditioning: dict[str, torch.Tensor]  # encoded captions (through trained text encoders when those train)
    source: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    class_conditioning: dict[str, torch.Tensor] | None = None
    # The class prompt as the untouched text encoders encode it: the base model's input (equal to
    # class_conditioning unless the text encoders train).
    class_base_conditioning: dict[str, torch.Tensor] | None = None


def train(spec: TrainingSpec, callbacks: TrainingCallbacks) -> TrainingResult:
    """Train as the spec says. Under torchrun each rank calls this (distributed.py says what differs)."""
    ranks = distributed.current_ranks()
    check_spec(spec)
    share = distributed.Share.of(ranks, spec.batch_size, spec.gradient_accumulation)
    family_name = resolve_family(spec.base_model)
    device = distributed.rank_device(pick_device(spec.device), ranks)
    distributed.join(ranks, device)
    if ranks.active:
        callbacks = distributed.RankCallbacks(callbacks, ranks)
    result = train_ranks(spec, callbacks, ranks, share, family_name, device)
    # Only after a run every rank finished: a rank leaving on an exception of its own while the others
    # wait in a collective could block there; its process ends instead, and torchrun stops the rest.
    distributed.leave(ranks)
    return result


def train_ranks(
    spec: TrainingSpec,
    callbacks: TrainingCallbacks,
    ranks: distributed.Ranks,
    share: distributed.Share,
    family_name: str,
    device: torch.device,
) -> TrainingResult:
    # bf16 base weights on a GPU; a FULL run without autocast trains and computes in fp32 throughout.
    full_precision = spec.training_type == "FULL" and spec.mixed_precision == "no"
    weight_dtype = torch.bfloat16 if device.type == "cuda" and not full_precision else torch.float32
    family = family_class(family_name)(spec.base_model, device, weight_dtype)
    transforms = validate_transforms(spec.transforms)
    resolution = spec.resolution or family.default_resolution()
    if resolution % family.size_multiple():
        raise EngineError(f"resolution {resolution} must be a multiple of {family.size_multiple()} for this model")
    if family.is_flow and (spec.min_snr_gamma or spec.noise_offset):
        raise EngineError(
            f"min_snr_gamma and noise_offset apply to noise-prediction models (SD 1.5, SDXL), not {family.name}; "
            "flow models are shaped with timestep_sampling and timestep_shift"
        )
    if spec.train_text_encoder and not family.text_encoder_tokenizers:
        raise EngineError(f"train_text_encoder: the {family.name} family's text encoders cannot be trained here")
    spec.output_dir.mkdir(parents=True, exist_ok=True)

    # Preprocess, then cache: each image and caption is encoded once, not once per step (by rank 0; the
    # other ranks read its cache and get the items without their pixels).
    items: list[PreparedItem] = []
    fingerprint = ""
    if ranks.main:
        items = prepare_items(spec, family, resolution, transforms, callbacks)
        fingerprint = dataset_fingerprint(spec, family_name, resolution, items)
        cache = load_or_build_cache(spec, family, items, fingerprint, flip_probability(transforms) > 0, callbacks)
    if ranks.active:
        # A broadcast after rank 0's cache is written: the other ranks then find it on the disk.
        shared = distributed.from_main(ranks, (without_pixels(items), fingerprint) if ranks.main else None)
        if not ranks.main:
            items, fingerprint = shared
            cache = load_or_build_cache(
                spec, family, items, fingerprint, flip_probability(transforms) > 0, callbacks, build=False
            )
    held_out = validation_indices(spec, items)
    check_cancel(callbacks)
    if callbacks.should_suspend():
        raise TrainingSuspended(0)  # the cache stays on disk for the next attempt on this machine

    # The denoiser: frozen base with trainable adapters, or (FULL) entirely trainable.
    torch.manual_seed(spec.seed)
    generator = torch.Generator(device="cpu").manual_seed(spec.seed)
    callbacks.on_stage("loading", 0, 1)
    denoiser = family.load_denoiser(load_device(spec, device, ranks))
    alpha = spec.lora_alpha if spec.lora_alpha is not None else float(spec.rank)
    speed, swap = prepare_denoiser(spec, family, denoiser, device, alpha=alpha, ranks=ranks)
    if swap is not None:
        callbacks.on_log(f"{len(swap.blocks)} blocks swapped from host memory; gradient checkpointing on")
    trainable = {name: p for name, p in denoiser.named_parameters() if p.requires_grad}
    groups = [{"params": list(trainable.values()), "lr": spec.learning_rate}]
    text_encoders = prepare_text_encoders(spec, family, alpha=alpha) if spec.train_text_encoder else None
    for component, encoder in (text_encoders or {}).items():
        distributed.replicate_trainable(encoder, ranks)
        parameters = {f"{component}.{name}": p for name, p in encoder.named_parameters() if p.requires_grad}
        trainable.update(parameters)
        groups.append(
            {
                "params": list(parameters.values()),
                "lr": spec.text_encoder_rate,
            }
        )
    sharded = distributed.shards_model(ranks, spec.training_type)
    optimizer = make_optimizer(spec, groups, device, callbacks, sharded=sharded)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(
        spec.lr_scheduler, optimizer, num_warmup_steps=spec.lr_warmup_steps, num_training_steps=spec.steps
    )
    ema = make_ema(spec, trainable)

    run_fingerprint = run_config_fingerprint(spec, fingerprint)
    start_step = 0
    smoothed: torch.Tensor | None = None
    if spec.resume:
        found = latest_valid_checkpoint(spec.checkpoint_dir, run_fingerprint)
        if found is not None:
            path, start_step = found
            state = load_checkpoint(
                path, parameters=trainable, optimizer=optimizer, scheduler=scheduler, generator=generator
            )  # each rank reads the same files; sharded tensors take their own shard
            if ema is not None:
                restore_ema(ema, trainable, state)
            if state.get("smoothed_loss") is not None:
                smoothed = torch.tensor(float(state["smoothed_loss"]), device=device)
            callbacks.on_log(f"resumed from the checkpoint at step {start_step} ({path.name})")

    repeats = [0 if index in held_out else item.repeats * spec.repeats for index, item in enumerate(items)]
    sampler = EpochSampler(cache.buckets, repeats, spec.batch_size, spec.seed)
    callbacks.on_log(
        f"{len(items) - len(held_out)} training images ({len(held_out)} held out for validation), "
        f"{sampler.batches_per_epoch} batches per epoch, "
        f"{math.ceil(spec.steps * max(1, spec.gradient_accumulation) / sampler.batches_per_epoch)} epochs"
    )
    flip_p = flip_probability(transforms)
    if device.type != "cpu":
        cache = cache_on(cache, device)  # the whole dataset's latents and embeddings: drawn from in place
    denoiser.train()
    context = StepContext(
        spec=spec,
        family=family,
        denoiser=denoiser,
        cache=cache,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=generator,
        noise=noise_generator(generator, device),
        device=device,
        sampler=sampler,
        flip_p=flip_p,
        settings=noise_settings(spec),
        speed=speed,
        ema=ema,
        text_encoders=text_encoders,
        share=share,
    )
    validation = sorted(held_out)
    if validation and start_step == 0:
        with evaluation_weights(context):
            callbacks.on_validation(0, validation_loss(context, validation))
    callbacks.on_stage("training", start_step, spec.steps)
    started = time.monotonic()
    last_report = 0.0
    last_snapshot_time, last_snapshot_step = started, start_step
    loss_value: float | None = None
    samples: list[Path] = []
    for step in range(start_step + 1, spec.steps + 1):
        step_loss = train_step(context, step)
        # Smoothed on the device: reading every step's loss back would make the host wait for it.
        smoothed = step_loss if smoothed is None else torch.lerp(smoothed, step_loss, LOSS_SMOOTHING)

        now = time.monotonic()
        if ranks.main and (step == spec.steps or now - last_report >= spec.progress_interval_seconds):
            loss_value = float(step_loss)
            if not math.isfinite(loss_value):
                raise EngineError(
                    f"training diverged at step {step}: the loss is {loss_value}; "
                    "lower the learning_rate or check the images"
                )
            done = step - start_step
            callbacks.on_progress(
                progress(step, spec.steps, loss_value, float(smoothed), scheduler, now - started, done)
            )
            last_report = now
        user_checkpoint = step < spec.steps and spec.save_every and step % spec.save_every == 0
        snapshot_due = step < spec.steps and (
            step - last_snapshot_step >= spec.snapshot_every_steps
            or now - last_snapshot_time >= spec.snapshot_every_seconds
        )
        # A worker shutting down: save where the next attempt resumes, then stop (after samples are due).
        suspend = step < spec.steps and callbacks.should_suspend()
        if ranks.active:
            snapshot_due = distributed.from_main(ranks, snapshot_due)  # rank 0's clock decides
        if user_checkpoint or snapshot_due or suspend:
            # The worker's own snapshot, whatever save_every says: a crash loses at most its cadence.
            kind = "step" if user_checkpoint else "snapshot"
            saved = save_on_main(
                context,
                ranks,
                step=step,
                fingerprint=run_fingerprint,
                keep=spec.max_step_saves_to_keep if user_checkpoint else 1,
                kind=kind,
                state={"smoothed_loss": float(smoothed), "ema_step": ema.optimization_step if ema else 0},
            )
            if saved is not None:
                (callbacks.on_checkpoint if user_checkpoint else callbacks.on_snapshot)(step, saved)
            last_snapshot_time, last_snapshot_step = time.monotonic(), step
        if (step % spec.sample_every == 0 or step == spec.steps) and (validation or spec.sample_prompts):
            with evaluation_weights(context):
                if validation:
                    callbacks.on_validation(step, validation_loss(context, validation))
                if spec.sample_prompts:
                    samples += take_samples(
                        spec, family, denoiser, items, step, resolution, callbacks, text_encoders, ranks=ranks
                    )
        if suspend:
            raise TrainingSuspended(step)
        if step < spec.steps:
            check_cancel(callbacks)

    callbacks.on_stage("exporting", 0, 1)
    if ema is not None:
        ema.copy_to(trainable.values())  # the averaged weights are the result
    # A sharded model's weights gathered whole (every rank takes part); rank 0 writes the files.
    full_state = distributed.full_tensors(denoiser.state_dict()) if sharded else None
    exported = (
        export_weights(
            spec=spec,
            family=family,
            denoiser=denoiser,
            alpha=alpha,
            resolution=resolution,
            dataset_hash=fingerprint,
            weight_dtype=weight_dtype,
            text_encoders=text_encoders,
            full_state=full_state,
        )
        if ranks.main
        else None
    )
    exported = distributed.from_main(ranks, exported)  # every rank returns the files rank 0 wrote
    callbacks.on_stage("exporting", 1, 1)
    return TrainingResult(
        family=family_name,
        weights_path=exported.weights_path,
        kohya_path=exported.kohya_path,
        steps_done=spec.steps,
        final_loss=loss_value,
        resumed_from_step=start_step,
        captions={item.name: item.caption for item in items},
        samples=samples,
        metadata=exported.metadata,
    )


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


def prepare_denoiser(
    spec: TrainingSpec,
    family: Family,
    denoiser: torch.nn.Module,
    device: torch.device,
    *,
    alpha: float,
    ranks: distributed.Ranks = distributed.SINGLE,
) -> tuple[SpeedOptions, BlockSwap | None]:
    """Make the loaded denoiser trainable as the spec says: the memory levers (quantized base, swapped
    blocks) as it comes onto the device, speed options, then adapters (frozen base) or every weight
    trainable (FULL), data-parallel or sharded over the ranks, then compilation. Shared with bench/'s
    real-size runs. The denoiser may arrive in host memory (`load_device`) and is on `device` after, but
    for its swapped blocks (and, sharded, each rank holds its shard)."""
    speed = resolve_speed(
        compile_mode=spec.compile,
        channels_last=spec.channels_last,
        attention=spec.attention,
        quantize_base=spec.quantize_base,
        mixed_precision=spec.mixed_precision,
        device=device,
        steps=spec.steps,
        is_unet=family.denoiser_key == "unet",
        training_type=spec.training_type,
        swap_blocks=spec.swap_blocks,
        static_shapes=not family.routed_experts,
    )
    if speed.quantize_base and spec.lora_type == "dora":
        raise EngineError(
            "quantize_base does not combine with lora_type dora: DoRA rescales the base weights themselves"
        )
    blocks = repeated_blocks(denoiser, family.block_prefixes)
    sharded = distributed.shards_model(ranks, spec.training_type)
    if ranks.active and speed.swap_blocks:
        raise EngineError(GPUS_AND_SWAP)  # contract.parameters' rule, checked at the start too
    # A sharded model comes onto the device shard by shard (distributed.shard_module), never whole.
    hosted = (
        []
        if sharded
        else place_denoiser(denoiser, device, blocks=blocks, quantize=speed.quantize_base, hosted=speed.swap_blocks)
    )
    apply_before_adapter(denoiser, speed)
    if spec.training_type == "LORA":
        denoiser.requires_grad_(False)
        # torch types undeclared Module attributes as Tensor | Module: add_adapter and
        # enable_gradient_checkpointing are the diffusers model's (PeftAdapterMixin, ModelMixin).
        denoiser.add_adapter(adapter_config(spec, family, alpha=alpha))  # type: ignore[operator]
        for parameter in denoiser.parameters():
            if parameter.requires_grad:
                # Adapters train in fp32 on a bf16 base, on the device (those of swapped blocks too).
                parameter.data = parameter.data.to(device, torch.float32)
    else:
        denoiser.float().requires_grad_(True)
    swap = BlockSwap(hosted, device) if hosted else None
    if spec.gradient_checkpointing or swap is not None:
        denoiser.enable_gradient_checkpointing()  # type: ignore[operator]
    if sharded:
        distributed.shard_module(denoiser, blocks, device, ranks)
    else:
        distributed.replicate_trainable(denoiser, ranks)
    apply_after_adapter(denoiser, speed)
    return speed, swap


def load_device(
    spec: TrainingSpec, device: torch.device, ranks: distributed.Ranks = distributed.SINGLE
) -> torch.device:
    """Where the denoiser is loaded: in host memory when a memory lever brings it onto the device block
    by block (`memory.place_denoiser`) or when it is sharded over the ranks, else straight onto the device."""
    hosted = spec.quantize_base or spec.swap_blocks or distributed.shards_model(ranks, spec.training_type)
    return torch.device("cpu") if hosted else device


TEXT_ENCODER_TARGETS = {  # CLIP text encoder modules per `lora_targets` preset
    "attention": r"^(text_model\.)?encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj$",
    "all_linear": r"^(text_model\.)?encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$",
}


def prepare_text_encoders(spec: TrainingSpec, family: Family, *, alpha: float) -> dict[str, torch.nn.Module]:
    """The family's text encoders with trainable adapters of the spec's rank on a frozen base (fp32)."""
    from peft import LoraConfig

    if not family.text_encoder_tokenizers:
        raise EngineError(f"train_text_encoder: the {family.name} family's text encoders cannot be trained here")
    targets = TEXT_ENCODER_TARGETS["attention" if spec.lora_targets == "attention" else "all_linear"]
    encoders = family.load_text_encoders()
    for encoder in encoders.values():
        encoder.requires_grad_(False)
        encoder.add_adapter(  # type: ignore[operator]  # transformers' PeftAdapterMixin, behind torch's __getattr__
            LoraConfig(
                r=spec.rank,
                lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates alpha as int; a float alpha works (scale = alpha / r)
                lora_dropout=spec.lora_dropout,
                init_lora_weights="gaussian",
                target_modules=targets,
                use_dora=spec.lora_type == "dora",
            )
        )
        for parameter in encoder.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
        encoder.train()
    return encoders


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


@contextlib.contextmanager
def adapters_disabled(denoiser: torch.nn.Module) -> Iterator[None]:
    denoiser.disable_adapters()  # type: ignore[operator]
    try:
        yield
    finally:
        denoiser.enable_adapters()  # type: ignore[operator]


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
            source = family.scale_latents(cache.source_means[index].unsqueeze(0)).to(context.device)
            source = source.repeat(levels, *[1] * (source.dim() - 1))
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


def check_spec(spec: TrainingSpec) -> None:
    choices = {
        "training_type": (spec.training_type, TRAINING_TYPES),
        "lr_scheduler": (spec.lr_scheduler, LR_SCHEDULERS),
        "lora_type": (spec.lora_type, LORA_TYPES),
        "lora_targets": (spec.lora_targets, LORA_TARGETS),
        "loss_type": (spec.loss_type, LOSS_TYPES),
        "timestep_sampling": (spec.timestep_sampling, TIMESTEP_SAMPLINGS),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise EngineError(f"{name} {value!r} is unknown; choose one of {', '.join(allowed)}")
    if spec.steps < 1 or spec.batch_size < 1 or spec.rank < 1 or spec.repeats < 1:
        raise EngineError("steps, batch_size, rank and repeats must be at least 1")
    if not 0 <= spec.caption_dropout_rate < 1:
        raise EngineError("caption_dropout_rate must be at least 0 and below 1")
    if not 0 <= spec.validation_split < 1:
        raise EngineError("validation_split must be at least 0 and below 1")
    if spec.ema and not 0 < spec.ema_decay < 1:
        raise EngineError("ema_decay must be between 0 and 1")
    if spec.prior_preservation_class and not spec.trigger_word:
        raise EngineError("prior preservation replaces the trigger word with the class word: set a trigger word")
    if spec.prior_preservation_class and spec.training_type != "LORA":
        raise EngineError("prior preservation compares the LoRA with the base model, so it needs training_type LORA")
    if spec.train_text_encoder and (spec.training_type != "LORA" or spec.lora_type not in ("lora", "dora")):
        raise EngineError("train_text_encoder trains a LoRA or DoRA on the text encoders: it needs training_type LORA")


def check_cancel(callbacks: TrainingCallbacks) -> None:
    if callbacks.should_cancel():
        raise TrainingCancelled()


def progress(step: int, total: int, loss: float, smoothed: float, scheduler: Any, elapsed: float, done: int) -> Any:
    from training.engine.spec import Progress

    remaining = (total - step) * elapsed / max(1, done)
    return Progress(
        stage="training",
        step=step,
        total_steps=total,
        loss=loss,
        smoothed_loss=smoothed,
        learning_rate=float(scheduler.get_last_lr()[0]),
        elapsed_seconds=elapsed,
        eta_seconds=math.ceil(remaining),
    )


def prepare_items(
    spec: TrainingSpec, family: Family, resolution: int, transforms: list, callbacks: TrainingCallbacks
) -> list[PreparedItem]:
    """Open, orient, transform, bucket and caption every image (or pair)."""
    buckets = make_buckets(resolution, family.size_multiple())
    rng = random.Random(spec.seed)
    if family.uses_pairs:
        if not spec.pairs:
            raise EngineError(f"the {family.name} family learns edits: the model needs before/after pairs")
        total = len(spec.pairs)
    else:
        if not spec.images:
            raise EngineError("the dataset has no images")
        total = len(spec.images)
    decode_side = decode_min_side(resolution, transforms)
    mode = "RGBA" if spec.masked_loss else "RGB"
    items: list[PreparedItem] = []
    unmasked = 0
    for index in range(total):
        callbacks.on_stage("preprocessing", index, total)
        if family.uses_pairs:
            pair = spec.pairs[index]
            target = apply_transforms(open_upright(pair.target, min_side=decode_side, mode=mode), transforms, rng)
            bucket = nearest_bucket(target.width, target.height, buckets)
            source = fit_to_bucket(open_upright(pair.source, min_side=decode_side), bucket)
            caption = with_trigger(pair.instruction, spec.trigger_word)
            name, picture, validation, repeats = pair.target.name, target, pair.target.validation, 1
            source_pixels: np.ndarray | None = to_tensor_array(source)
        else:
            image = spec.images[index]
            picture = apply_transforms(open_upright(image, min_side=decode_side, mode=mode), transforms, rng)
            bucket = nearest_bucket(picture.width, picture.height, buckets)
            caption = caption_for(
                image,
                strategy=spec.captioning_strategy,
                trigger_word=spec.trigger_word,
                captioner=spec.captioner,
                prompt=spec.captioning_prompt,
                picture=picture.convert("RGB"),
            )
            name, validation, repeats, source_pixels = image.name, image.validation, image.repeats, None
        fitted = fit_to_bucket(picture, bucket)
        mask = alpha_mask(fitted) if spec.masked_loss else None
        unmasked += spec.masked_loss and mask is None
        items.append(
            PreparedItem(
                name=name,
                caption=caption,
                bucket=bucket,
                pixels=to_tensor_array(fitted.convert("RGB")),
                source_pixels=source_pixels,
                mask=mask,
                original_size=(picture.height, picture.width),
                crop_top_left=bucket_crop(picture.size, bucket),
                repeats=repeats,
                validation=validation,
            )
        )
    if unmasked:
        callbacks.on_log(f"masked_loss: {unmasked} of {total} images have no transparency; they are learned whole")
    callbacks.on_stage("preprocessing", total, total)
    return items


def without_pixels(items: list[PreparedItem]) -> list[PreparedItem]:
    """The items as the other ranks need them: no pixels (the cache holds the latents) but the first
    source image, which samples of edit models start from."""
    import dataclasses

    empty = np.zeros((3, 1, 1), dtype=np.float32)
    return [
        dataclasses.replace(item, pixels=empty, mask=None, source_pixels=item.source_pixels if index == 0 else None)
        for index, item in enumerate(items)
    ]


def load_or_build_cache(
    spec: TrainingSpec,
    family: Family,
    items: list[PreparedItem],
    fingerprint: str,
    with_flips: bool,
    callbacks: TrainingCallbacks,
    *,
    build: bool = True,
) -> Cache:
    """The cache of this dataset, read from the disk or built (`build`: rank 0's part; the other ranks
    only read what it wrote, their items have no pixels)."""
    path = spec.cache_dir / f"cache-{fingerprint}-{'flip' if with_flips else 'plain'}.pt"
    if path.is_file():
        try:
            cache = Cache(**torch.load(path, weights_only=False))
            callbacks.on_log(f"reusing cached latents and embeddings ({path.name})")
            return cache
        except (OSError, RuntimeError, TypeError, EOFError):
            if not build:
                raise
            path.unlink(missing_ok=True)
    if not build:
        raise EngineError(f"the cache {path.name} written by rank 0 is missing")
    callbacks.on_stage("caching", 0, len(items))
    family.load_encoders()

    def encode(array: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = family.encode_pixels(torch.from_numpy(array).unsqueeze(0))
        return mean[0], std[0]

    def latent_mask(mask: np.ndarray | None) -> torch.Tensor:
        if mask is None:
            return torch.ones(1, means[-1].shape[-2], means[-1].shape[-1])
        return F.adaptive_avg_pool2d(
            torch.from_numpy(mask.copy())[None, None], (means[-1].shape[-2], means[-1].shape[-1])
        )[0]

    means, stds, flipped_means, flipped_stds, source_means, flipped_source = [], [], [], [], [], []
    masks, flipped_masks, time_ids, flipped_time_ids = [], [], [], []
    for index, item in enumerate(items):
        mean, std = encode(item.pixels)
        means.append(mean)
        stds.append(std)
        masks.append(latent_mask(item.mask))
        top, left = item.crop_top_left
        height, width = item.bucket[1], item.bucket[0]
        time_ids.append(torch.tensor([*item.original_size, top, left, height, width], dtype=torch.float32))
        # A flipped image's crop is mirrored: the same distance from the other edge.
        mirrored = round(item.original_size[1] * max(width / item.original_size[1], height / item.original_size[0]))
        flipped_time_ids.append(
            torch.tensor(
                [*item.original_size, top, max(0, mirrored - width - left), height, width], dtype=torch.float32
            )
        )
        if with_flips:
            mean, std = encode(item.pixels[:, :, ::-1].copy())
            flipped_means.append(mean)
            flipped_stds.append(std)
            flipped_masks.append(masks[-1].flip(-1))
        if item.source_pixels is not None:
            source_means.append(encode(item.source_pixels)[0])
            if with_flips:
                flipped_source.append(encode(item.source_pixels[:, :, ::-1].copy())[0])
        callbacks.on_stage("caching", index + 1, len(items))
    item_captions = sorted({item.caption for item in items})
    class_captions = {}
    if spec.prior_preservation_class:
        class_captions = {caption: class_caption(caption, spec) for caption in item_captions}
    captions = ["", *sorted(set(item_captions) | set(class_captions.values()))]
    rows = {caption: row for row, caption in enumerate(captions)}
    for prompt, count, limit in family.long_prompts(captions):
        callbacks.on_log(
            f"caption longer than the text encoder reads ({count} tokens, {limit} read; the rest is ignored, "
            f"as at generation): {prompt[:80]!r}"
        )
    tokens = family.tokenize(captions) if spec.train_text_encoder else None
    encoded: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(captions), 8):
        for key, tensor in family.encode_prompts(captions[start : start + 8]).items():
            encoded.setdefault(key, []).append(tensor)
    family.release_encoders()
    prompts = {key: torch.cat(parts) for key, parts in encoded.items()}
    unconditional = family.unconditional({key: value[:1] for key, value in prompts.items()})
    for key, value in unconditional.items():
        prompts[key][:1] = value
    cache = Cache(
        means=means,
        stds=stds,
        flipped_means=flipped_means if with_flips else None,
        flipped_stds=flipped_stds if with_flips else None,
        source_means=source_means or None,
        flipped_source_means=flipped_source or None,
        prompts=prompts,
        caption_rows=[rows[item.caption] for item in items],
        buckets=[item.bucket for item in items],
        masks=masks if spec.masked_loss else None,
        flipped_masks=flipped_masks if spec.masked_loss and with_flips else None,
        time_ids=time_ids if family.conditions_on_sizes else None,
        flipped_time_ids=flipped_time_ids if family.conditions_on_sizes else None,
        class_rows=[rows[class_captions[item.caption]] for item in items] if class_captions else None,
        prompt_tokens=tokens,
    )
    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(cache.__dict__, partial)
    partial.replace(path)
    return cache


def class_caption(caption: str, spec: TrainingSpec) -> str:
    """The caption with the trigger word replaced by the class word: what the base model already knows."""
    import re

    # As `with_trigger` finds the word: any case, and a trigger such as "<zxq>" that \b cannot delimit.
    word = rf"(?<!\w){re.escape(spec.trigger_word)}(?!\w)"
    replaced = re.sub(word, spec.prior_preservation_class or "", caption, flags=re.IGNORECASE)
    return " ".join(replaced.replace(" ,", ",").split()).strip(", ")


def cache_on(cache: Cache, device: torch.device) -> Cache:
    """The cache with every tensor moved to `device` once, before the loop."""

    def move(tensors: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        return None if tensors is None else [tensor.to(device) for tensor in tensors]

    return Cache(
        means=move(cache.means) or [],
        stds=move(cache.stds) or [],
        flipped_means=move(cache.flipped_means),
        flipped_stds=move(cache.flipped_stds),
        source_means=move(cache.source_means),
        flipped_source_means=move(cache.flipped_source_means),
        prompts={key: value.to(device) for key, value in cache.prompts.items()},
        caption_rows=cache.caption_rows,
        buckets=cache.buckets,
        masks=move(cache.masks),
        flipped_masks=move(cache.flipped_masks),
        time_ids=move(cache.time_ids),
        flipped_time_ids=move(cache.flipped_time_ids),
        class_rows=cache.class_rows,
        prompt_tokens=None
        if cache.prompt_tokens is None
        else {k: v.to(device) for k, v in cache.prompt_tokens.items()},
    )


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
        source=context.family.scale_latents(torch.stack(sources)).to(device) if sources else None,
        mask=torch.stack(masks).to(device) if masks else None,
        class_conditioning=conditioning_for(class_rows) if class_rows else None,
        class_base_conditioning=conditioning_for(class_rows, frozen=True) if class_rows else None,
    )


def take_samples(
    spec: TrainingSpec,
    family: Family,
    denoiser: torch.nn.Module,
    items: list[PreparedItem],
    step: int,
    resolution: int,
    callbacks: TrainingCallbacks,
    text_encoders: dict[str, torch.nn.Module] | None = None,
    *,
    ranks: distributed.Ranks = distributed.SINGLE,
) -> list[Path]:
    """Images for the sample prompts, through the same pipeline code as the API's generations. Every
    rank runs the pipeline (a sharded model's forward needs them all); rank 0 keeps the images."""
    from PIL import Image

    denoiser.eval()
    components: dict[str, Any] = {family.denoiser_key: denoiser, **(text_encoders or {})}
    for encoder in (text_encoders or {}).values():
        encoder.eval()
    pipeline = load_pipeline(spec.base_model, device=family.device, components=components)
    folder = spec.output_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    source = None
    if family.uses_pairs and items and items[0].source_pixels is not None:
        array = ((items[0].source_pixels.transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype("uint8")
        source = Image.fromarray(array)
    paths = []
    for index, prompt in enumerate(spec.sample_prompts):
        image = run_pipeline(
            pipeline,
            prompt=prompt,
            width=resolution,
            height=resolution,
            steps=spec.sample_steps,
            seed=spec.seed + index,
            image=source,
            bypass_guidance_embedding=spec.bypass_guidance_embedding,
        )[0]
        path = folder / f"step-{step:07d}-{index}.png"
        if ranks.main:
            image.save(path)
            paths.append(path)
            callbacks.on_sample(step, prompt, path)
    del pipeline
    denoiser.train()
    for encoder in (text_encoders or {}).values():
        encoder.train()
    return paths


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
