"""Setting a run up: the spec's checks, the denoiser made trainable (memory levers, speed options, adapters
or FULL, ranks, compilation) and the text encoders' adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from contract.parameters import GPUS_AND_SWAP
from training.engine import distributed
from training.engine.adapters import adapter_config, add_adapter
from training.engine.data import flip_probability, validate_transforms
from training.engine.errors import EngineError
from training.engine.families import Family, family_class
from training.engine.memory import BlockSwap, place_denoiser, repeated_blocks
from training.engine.spec import (
    LORA_TARGETS,
    LORA_TYPES,
    LOSS_TYPES,
    LR_SCHEDULERS,
    TIMESTEP_SAMPLINGS,
    TRAINING_TYPES,
    TrainingCallbacks,
    TrainingSpec,
)
from training.engine.speed import SpeedOptions, apply_after_adapter, apply_before_adapter, resolve_speed
from training.engine.trainer.dataset import edit_mode
from training.engine.trainer.ema import make_ema
from training.engine.trainer.optimizer import make_optimizer


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
        add_adapter(denoiser, adapter_config(spec, family, alpha=alpha))
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


def set_up_family(spec: TrainingSpec, family_name: str, device: torch.device) -> tuple[Family, int, list]:
    """The family's adapter in the run's precision, the resolution and transforms, and the checks that need
    the family: bf16 base weights on a GPU (a FULL run without autocast trains and computes in fp32)."""
    full_precision = spec.training_type == "FULL" and spec.mixed_precision == "no"
    weight_dtype = torch.bfloat16 if device.type == "cuda" and not full_precision else torch.float32
    family = family_class(family_name)(spec.base_model, device, weight_dtype)
    family.uses_pairs = edit_mode(spec, family)
    transforms = validate_transforms(spec.transforms)
    if family.uses_pairs and family.captions_see_sources and flip_probability(transforms):
        raise EngineError(
            f"horizontal_flip: {family.name}'s text encoder reads each pair's source images as they are, unflipped; "
            "train its edit pairs without the flip"
        )
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
    return family, resolution, transforms


@dataclass
class Trainable:
    """The model as it trains: the denoiser (and text encoders) with what is trained marked, and what steps it."""

    denoiser: torch.nn.Module
    parameters: dict[str, torch.nn.Parameter]  # every trained tensor, by name
    text_encoders: dict[str, torch.nn.Module] | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any
    alpha: float
    speed: SpeedOptions
    sharded: bool


def make_trainable(
    spec: TrainingSpec,
    family: Family,
    device: torch.device,
    ranks: distributed.Ranks,
    callbacks: TrainingCallbacks,
) -> Trainable:
    callbacks.on_stage("loading", 0, 1)
    denoiser = family.load_denoiser(load_device(spec, device, ranks))
    alpha = spec.lora_alpha if spec.lora_alpha is not None else float(spec.rank)
    speed, swap = prepare_denoiser(spec, family, denoiser, device, alpha=alpha, ranks=ranks)
    log_swap(swap, callbacks)
    trainable = {name: p for name, p in denoiser.named_parameters() if p.requires_grad}
    groups = [{"params": list(trainable.values()), "lr": spec.learning_rate}]
    text_encoders = prepare_text_encoders(spec, family, alpha=alpha) if spec.train_text_encoder else None
    for component, encoder in (text_encoders or {}).items():
        distributed.replicate_trainable(encoder, ranks)
        parameters = {f"{component}.{name}": p for name, p in encoder.named_parameters() if p.requires_grad}
        trainable.update(parameters)
        groups.append({"params": list(parameters.values()), "lr": spec.text_encoder_rate})
    sharded = distributed.shards_model(ranks, spec.training_type)
    optimizer = make_optimizer(spec, groups, device, callbacks, sharded=sharded)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(
        spec.lr_scheduler, optimizer, num_warmup_steps=spec.lr_warmup_steps, num_training_steps=spec.steps
    )
    return Trainable(
        denoiser=denoiser,
        parameters=trainable,
        text_encoders=text_encoders,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=make_ema(spec, trainable),
        alpha=alpha,
        speed=speed,
        sharded=sharded,
    )


def log_swap(swap: BlockSwap | None, callbacks: TrainingCallbacks) -> None:
    if swap is not None:
        callbacks.on_log(f"{len(swap.blocks)} blocks swapped from host memory; gradient checkpointing on")
