"""The training loop shared by every family, in the order of the method: prepare the dataset, cache
latents and embeddings, add the adapter, then noise / predict / loss / step, with checkpoints,
samples and export along the way."""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.engine.base_models import resolve_family
from training.engine.checkpoints import latest_valid_checkpoint, load_checkpoint, save_checkpoint
from training.engine.data import (
    PreparedItem,
    apply_transforms,
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
from training.engine.errors import EngineError, TrainingCancelled
from training.engine.export import (
    FULL_WEIGHTS_NAME,
    KOHYA_WEIGHTS_NAME,
    LORA_WEIGHTS_NAME,
    add_metadata,
    write_kohya,
)
from training.engine.families import Family, family_class
from training.engine.generate import load_pipeline, pick_device, run_pipeline
from training.engine.spec import LR_SCHEDULERS, TRAINING_TYPES, TrainingCallbacks, TrainingResult, TrainingSpec
from training.engine.speed import SpeedOptions, apply_after_adapter, apply_before_adapter, resolve_speed

MAX_GRAD_NORM = 1.0


@dataclass
class Cache:
    """What the denoiser trains on, computed once: latent distributions and prompt embeddings."""

    means: list[torch.Tensor]
    stds: list[torch.Tensor]
    flipped_means: list[torch.Tensor] | None
    flipped_stds: list[torch.Tensor] | None
    source_means: list[torch.Tensor] | None
    flipped_source_means: list[torch.Tensor] | None
    prompts: dict[str, torch.Tensor]  # row 0 is the empty caption, used for caption dropout
    caption_rows: list[int]
    buckets: list[tuple[int, int]]


def train(spec: TrainingSpec, callbacks: TrainingCallbacks) -> TrainingResult:
    check_spec(spec)
    family_name = resolve_family(spec.base_model)
    device = pick_device(spec.device)
    weight_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    family = family_class(family_name)(spec.base_model, device, weight_dtype)
    transforms = validate_transforms(spec.transforms)
    resolution = spec.resolution or family.default_resolution()
    if resolution % family.size_multiple():
        raise EngineError(f"resolution {resolution} must be a multiple of {family.size_multiple()} for this model")
    spec.output_dir.mkdir(parents=True, exist_ok=True)

    # Preprocess, then cache: each image and caption is encoded once, not once per step.
    items = prepare_items(spec, family, resolution, transforms, callbacks)
    fingerprint = dataset_fingerprint(spec, family_name, resolution)
    cache = load_or_build_cache(spec, family, items, fingerprint, flip_probability(transforms) > 0, callbacks)
    check_cancel(callbacks)

    # The denoiser: frozen base with trainable LoRA adapters, or (FULL) entirely trainable.
    torch.manual_seed(spec.seed)
    generator = torch.Generator(device="cpu").manual_seed(spec.seed)
    callbacks.on_stage("loading", 0, 1)
    denoiser = family.load_denoiser()
    alpha = spec.lora_alpha if spec.lora_alpha is not None else float(spec.rank)
    speed = prepare_denoiser(spec, family, denoiser, device, alpha=alpha)
    trainable = {name: p for name, p in denoiser.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(spec, list(trainable.values()), device, callbacks)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(
        spec.lr_scheduler, optimizer, num_warmup_steps=spec.lr_warmup_steps, num_training_steps=spec.steps
    )

    run_fingerprint = run_config_fingerprint(spec, fingerprint)
    start_step = 0
    if spec.resume:
        found = latest_valid_checkpoint(spec.checkpoint_dir, run_fingerprint)
        if found is not None:
            path, start_step = found
            load_checkpoint(path, parameters=trainable, optimizer=optimizer, scheduler=scheduler, generator=generator)
            callbacks.on_log(f"resumed from the checkpoint at step {start_step} ({path.name})")

    by_bucket = bucket_members(cache)
    flip_p = flip_probability(transforms)
    if device.type != "cpu":
        cache = cache_on(cache, device)  # the whole dataset's latents and embeddings: drawn from in place
    denoiser.train()
    options = {"guidance_scale": spec.guidance_scale, "bypass_guidance_embedding": spec.bypass_guidance_embedding}
    callbacks.on_stage("training", start_step, spec.steps)
    started = time.monotonic()
    last_report = 0.0
    loss_value: float | None = None
    samples: list[Path] = []
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
        by_bucket=by_bucket,
        flip_p=flip_p,
        options=options,
        speed=speed,
    )
    for step in range(start_step + 1, spec.steps + 1):
        step_loss = train_step(context, step)

        now = time.monotonic()
        if step == spec.steps or now - last_report >= spec.progress_interval_seconds:
            # Reading the loss back syncs with the device, so it happens at the reporting rate only.
            loss_value = float(step_loss)
            if not math.isfinite(loss_value):
                raise EngineError(
                    f"training diverged at step {step}: the loss is {loss_value}; "
                    "lower the learning_rate or check the images"
                )
            done = step - start_step
            callbacks.on_progress(progress(step, spec.steps, loss_value, scheduler, now - started, done))
            last_report = now
        if step < spec.steps and spec.save_every and step % spec.save_every == 0:
            path = save_checkpoint(
                spec.checkpoint_dir,
                step=step,
                weights=trainable,
                optimizer=optimizer,
                scheduler=scheduler,
                generator=generator,
                fingerprint=run_fingerprint,
                keep=spec.max_step_saves_to_keep,
            )
            callbacks.on_checkpoint(step, path)
        if spec.sample_prompts and (step % spec.sample_every == 0 or step == spec.steps):
            samples += take_samples(spec, family, denoiser, items, step, resolution, callbacks)
        if step < spec.steps:
            check_cancel(callbacks)

    callbacks.on_stage("exporting", 0, 1)
    metadata = {
        "base_model": spec.base_model,
        "family": family_name,
        "trigger_word": spec.trigger_word,
        "training_type": spec.training_type,
        "rank": str(spec.rank),
        "alpha": str(alpha),
        "steps": str(spec.steps),
        "resolution": str(resolution),
        "learning_rate": str(spec.learning_rate),
        "dataset_hash": fingerprint,
    }
    kohya_path = None
    if spec.training_type == "LORA":
        from peft.utils import get_peft_model_state_dict

        lora_state = get_peft_model_state_dict(denoiser)
        adapter_metadata = denoiser.peft_config["default"].to_dict()
        adapter_metadata["target_modules"] = sorted(adapter_metadata["target_modules"])
        family.save_lora(lora_state, str(spec.output_dir), LORA_WEIGHTS_NAME, adapter_metadata)
        weights_path = spec.output_dir / LORA_WEIGHTS_NAME
        add_metadata(weights_path, {**metadata, "layout": "diffusers"})
        kohya_path = write_kohya(weights_path, spec.output_dir / KOHYA_WEIGHTS_NAME, alpha=alpha, metadata=metadata)
    else:
        from safetensors.torch import save_file

        weights_path = spec.output_dir / FULL_WEIGHTS_NAME
        state = {
            name: tensor.detach().to("cpu", weight_dtype).contiguous() for name, tensor in denoiser.state_dict().items()
        }
        save_file(state, str(weights_path), metadata={**metadata, "format": "pt", "component": family.denoiser_key})
    callbacks.on_stage("exporting", 1, 1)
    return TrainingResult(
        family=family_name,
        weights_path=weights_path,
        kohya_path=kohya_path,
        steps_done=spec.steps,
        final_loss=loss_value,
        resumed_from_step=start_step,
        captions={item.name: item.caption for item in items},
        samples=samples,
        metadata=metadata,
    )


def prepare_denoiser(
    spec: TrainingSpec, family: Family, denoiser: torch.nn.Module, device: torch.device, *, alpha: float
) -> SpeedOptions:
    """Make the loaded denoiser trainable as the spec says: speed options, then LoRA adapters (frozen
    base) or every weight trainable (FULL), then compilation. Shared with bench/'s real-size runs."""
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
    )
    apply_before_adapter(denoiser, speed)
    if spec.training_type == "LORA":
        from peft import LoraConfig

        denoiser.requires_grad_(False)
        denoiser.add_adapter(
            LoraConfig(
                r=spec.rank,
                lora_alpha=alpha,
                init_lora_weights="gaussian",
                target_modules=family.lora_target_modules,
            )
        )
        for parameter in denoiser.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()  # adapters train in fp32 on a bf16 base
    else:
        denoiser.float().requires_grad_(True)
    if spec.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    apply_after_adapter(denoiser, speed)
    return speed


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
    by_bucket: dict[tuple[int, int], list[int]]
    flip_p: float
    options: dict[str, Any]
    speed: SpeedOptions


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
    autocast = (
        torch.autocast(device_type=context.device.type, dtype=torch.bfloat16)
        if context.speed.mixed_precision == "bf16"
        else _no_autocast()
    )
    step_loss = torch.zeros((), device=context.device)
    for _ in range(accumulation):
        latents, conditioning, source = draw_batch(
            context.cache,
            context.spec,
            context.family,
            context.generator,
            context.device,
            by_bucket=context.by_bucket,
            flip_p=context.flip_p,
            noise=context.noise,
        )
        with autocast:
            loss = context.family.loss(
                context.denoiser,
                latents,
                conditioning,
                context.noise,
                source_latents=source,
                options=context.options,
            )
        (loss / accumulation).backward()
        step_loss += loss.detach() / accumulation
    torch.nn.utils.clip_grad_norm_(context.trainable.values(), MAX_GRAD_NORM)
    context.optimizer.step()
    context.scheduler.step()
    context.optimizer.zero_grad(set_to_none=True)
    return step_loss


class _no_autocast:  # noqa: N801 - used like torch.autocast
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def check_spec(spec: TrainingSpec) -> None:
    if spec.training_type not in TRAINING_TYPES:
        raise EngineError(f"training_type {spec.training_type!r} is unknown; choose {' or '.join(TRAINING_TYPES)}")
    if spec.lr_scheduler not in LR_SCHEDULERS:
        raise EngineError(f"lr_scheduler {spec.lr_scheduler!r} is unknown; choose one of {', '.join(LR_SCHEDULERS)}")
    if spec.steps < 1 or spec.batch_size < 1 or spec.rank < 1:
        raise EngineError("steps, batch_size and rank must be at least 1")
    if not 0 <= spec.caption_dropout_rate < 1:
        raise EngineError("caption_dropout_rate must be at least 0 and below 1")


def check_cancel(callbacks: TrainingCallbacks) -> None:
    if callbacks.should_cancel():
        raise TrainingCancelled()


def progress(step: int, total: int, loss: float, scheduler: Any, elapsed: float, done: int) -> Any:
    from training.engine.spec import Progress

    remaining = (total - step) * elapsed / max(1, done)
    return Progress(
        stage="training",
        step=step,
        total_steps=total,
        loss=loss,
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
    items: list[PreparedItem] = []
    for index in range(total):
        callbacks.on_stage("preprocessing", index, total)
        if family.uses_pairs:
            pair = spec.pairs[index]
            target = apply_transforms(open_upright(pair.target, min_side=decode_side), transforms, rng)
            bucket = nearest_bucket(target.width, target.height, buckets)
            source = fit_to_bucket(open_upright(pair.source, min_side=decode_side), bucket)
            caption = with_trigger(pair.instruction, spec.trigger_word)
            items.append(
                PreparedItem(
                    name=pair.target.name,
                    caption=caption,
                    bucket=bucket,
                    pixels=to_tensor_array(fit_to_bucket(target, bucket)),
                    source_pixels=to_tensor_array(source),
                )
            )
            continue
        image = spec.images[index]
        picture = apply_transforms(open_upright(image, min_side=decode_side), transforms, rng)
        bucket = nearest_bucket(picture.width, picture.height, buckets)
        caption = caption_for(
            image,
            strategy=spec.captioning_strategy,
            trigger_word=spec.trigger_word,
            captioner=spec.captioner,
            prompt=spec.captioning_prompt,
            picture=picture,
        )
        items.append(
            PreparedItem(
                name=image.name, caption=caption, bucket=bucket, pixels=to_tensor_array(fit_to_bucket(picture, bucket))
            )
        )
    callbacks.on_stage("preprocessing", total, total)
    return items


def load_or_build_cache(
    spec: TrainingSpec,
    family: Family,
    items: list[PreparedItem],
    fingerprint: str,
    with_flips: bool,
    callbacks: TrainingCallbacks,
) -> Cache:
    path = spec.cache_dir / f"cache-{fingerprint}-{'flip' if with_flips else 'plain'}.pt"
    if path.is_file():
        try:
            cache = Cache(**torch.load(path, weights_only=False))
            callbacks.on_log(f"reusing cached latents and embeddings ({path.name})")
            return cache
        except (OSError, RuntimeError, TypeError, EOFError):
            path.unlink(missing_ok=True)
    callbacks.on_stage("caching", 0, len(items))
    family.load_encoders()

    def encode(array: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = family.encode_pixels(torch.from_numpy(array).unsqueeze(0))
        return mean[0], std[0]

    means, stds, flipped_means, flipped_stds, source_means, flipped_source = [], [], [], [], [], []
    for index, item in enumerate(items):
        mean, std = encode(item.pixels)
        means.append(mean)
        stds.append(std)
        if with_flips:
            mean, std = encode(item.pixels[:, :, ::-1].copy())
            flipped_means.append(mean)
            flipped_stds.append(std)
        if item.source_pixels is not None:
            source_means.append(encode(item.source_pixels)[0])
            if with_flips:
                flipped_source.append(encode(item.source_pixels[:, :, ::-1].copy())[0])
        callbacks.on_stage("caching", index + 1, len(items))
    captions = ["", *sorted({item.caption for item in items})]
    rows = {caption: row for row, caption in enumerate(captions)}
    encoded: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(captions), 8):
        for key, tensor in family.encode_prompts(captions[start : start + 8]).items():
            encoded.setdefault(key, []).append(tensor)
    family.release_encoders()
    cache = Cache(
        means=means,
        stds=stds,
        flipped_means=flipped_means if with_flips else None,
        flipped_stds=flipped_stds if with_flips else None,
        source_means=source_means or None,
        flipped_source_means=flipped_source or None,
        prompts={key: torch.cat(parts) for key, parts in encoded.items()},
        caption_rows=[rows[item.caption] for item in items],
        buckets=[item.bucket for item in items],
    )
    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(cache.__dict__, partial)
    partial.replace(path)
    return cache


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
    )


def bucket_members(cache: Cache) -> dict[tuple[int, int], list[int]]:
    members: dict[tuple[int, int], list[int]] = {}
    for index, bucket in enumerate(cache.buckets):
        members.setdefault(tuple(bucket), []).append(index)  # type: ignore[arg-type]
    return members


def draw_batch(
    cache: Cache,
    spec: TrainingSpec,
    family: Family,
    generator: torch.Generator,
    device: torch.device,
    *,
    by_bucket: dict[tuple[int, int], list[int]],
    flip_p: float,
    noise: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """A batch from one bucket: the images, flips and caption dropout drawn on the host from `generator`;
    the latent samples from `noise`, on the device the cache is on."""
    noise = noise or generator
    count = len(cache.means)
    first = int(torch.randint(0, count, (1,), generator=generator))
    members = by_bucket[tuple(cache.buckets[first])]  # type: ignore[index]
    chosen = [first] + [
        members[int(torch.randint(0, len(members), (1,), generator=generator))] for _ in range(spec.batch_size - 1)
    ]
    latents, sources, rows = [], [], []
    for index in chosen:
        flip = cache.flipped_means is not None and float(torch.rand((), generator=generator)) < flip_p
        mean = (cache.flipped_means if flip else cache.means)[index]  # type: ignore[index]
        std = (cache.flipped_stds if flip else cache.stds)[index]  # type: ignore[index]
        latents.append(mean + std * torch.randn(mean.shape, generator=noise, device=noise.device))
        if cache.source_means is not None:
            sources.append((cache.flipped_source_means if flip else cache.source_means)[index])  # type: ignore[index]
        dropped = (
            spec.caption_dropout_rate > 0 and float(torch.rand((), generator=generator)) < spec.caption_dropout_rate
        )
        rows.append(0 if dropped else cache.caption_rows[index])
    conditioning = {key: torch.stack([value[row] for row in rows]).to(device) for key, value in cache.prompts.items()}
    batch = family.scale_latents(torch.stack(latents)).to(device)
    source = family.scale_latents(torch.stack(sources)).to(device) if sources else None
    return batch, conditioning, source


def take_samples(
    spec: TrainingSpec,
    family: Family,
    denoiser: torch.nn.Module,
    items: list[PreparedItem],
    step: int,
    resolution: int,
    callbacks: TrainingCallbacks,
) -> list[Path]:
    """Images for the sample prompts, through the same pipeline code as the API's generations."""
    from PIL import Image

    denoiser.eval()
    pipeline = load_pipeline(spec.base_model, device=family.device, components={family.denoiser_key: denoiser})
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
        image.save(path)
        paths.append(path)
        callbacks.on_sample(step, prompt, path)
    del pipeline
    denoiser.train()
    return paths


def run_config_fingerprint(spec: TrainingSpec, dataset: str) -> str:
    """Checkpoints resume only a run with the same data and the same settings that shape the weights."""
    settings = {
        "dataset": dataset,
        "type": spec.training_type,
        "rank": spec.rank,
        "alpha": spec.lora_alpha,
        "steps": spec.steps,
        "lr": spec.learning_rate,
        "scheduler": spec.lr_scheduler,
        "warmup": spec.lr_warmup_steps,
        "batch": spec.batch_size,
        "accumulation": spec.gradient_accumulation,
        "optimizer": spec.optimizer,
        "seed": spec.seed,
        "dropout": spec.caption_dropout_rate,
        "resolution": spec.resolution,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def make_optimizer(
    spec: TrainingSpec, params: list[torch.nn.Parameter], device: torch.device, callbacks: TrainingCallbacks
) -> torch.optim.Optimizer:
    name = spec.optimizer.lower()
    if name in ("adamw8bit", "adamw_8bit"):
        if device.type == "cuda":
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
        return Prodigy(params, lr=spec.learning_rate)
    raise EngineError(f"optimizer {spec.optimizer!r} is unknown; choose adamw8bit, adamw or prodigy")
