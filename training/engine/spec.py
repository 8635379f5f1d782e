"""Plain data the engine takes and gives back. No Django here: the runner builds these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from contract.parameters import (
    CAPTIONING_STRATEGIES,
    LORA_TARGETS,
    LORA_TYPES,
    LOSS_TYPES,
    LR_SCHEDULERS,
    TIMESTEP_SAMPLINGS,
    TRAINING_TYPES,
    default,
)

__all__ = [
    "CAPTIONING_STRATEGIES",
    "LORA_TARGETS",
    "LORA_TYPES",
    "LOSS_TYPES",
    "LR_SCHEDULERS",
    "TIMESTEP_SAMPLINGS",
    "TRAINING_TYPES",
    "Captioner",
    "DatasetImage",
    "DatasetPair",
    "Progress",
    "SilentCallbacks",
    "TrainingCallbacks",
    "TrainingResult",
    "TrainingSpec",
]

# A local captioning model: image (and the user's prompt, if any) in, caption out.
Captioner = Callable[[Image.Image, str | None], str]


@dataclass(frozen=True)
class DatasetImage:
    path: Path
    name: str
    caption: str = ""
    repeats: int = 1  # times the image is seen per epoch (kohya's folder repeats)
    validation: bool = False  # held out: never trained on, its loss measured every `sample_every` steps


@dataclass(frozen=True)
class DatasetPair:
    """A before/after pair for edit training: learn to turn `source` (with any `other_sources`, for the models
    that take several reference images) into `target`, as `instruction` says."""

    source: DatasetImage
    target: DatasetImage
    instruction: str
    other_sources: tuple[DatasetImage, ...] = ()

    @property
    def sources(self) -> tuple[DatasetImage, ...]:
        return (self.source, *self.other_sources)


@dataclass
class TrainingSpec:
    base_model: str
    output_dir: Path
    images: list[DatasetImage]
    trigger_word: str
    pairs: list[DatasetPair] = field(default_factory=list)
    training_type: str = default("training_type")
    rank: int = default("rank")
    lora_alpha: float | None = default("lora_alpha")  # None: equal to rank, so the LoRA's scale is 1
    steps: int = default("steps")
    learning_rate: float = default("learning_rate")
    lr_scheduler: str = default("lr_scheduler")
    lr_warmup_steps: int = default("lr_warmup_steps")
    batch_size: int = default("batch_size")
    gradient_accumulation: int = default("gradient_accumulation")
    gradient_checkpointing: bool = default("gradient_checkpointing")
    optimizer: str = default("optimizer")
    resolution: int | None = default("resolution")  # None: the base model's native size
    seed: int = default("seed")
    captioning_strategy: str = default("preprocessing_captioning_strategy")
    captioning_prompt: str | None = default("preprocessing_captioning_prompt")
    captioner: Captioner | None = None
    caption_dropout_rate: float = default("caption_dropout_rate")
    transforms: list[dict[str, Any]] | None = None
    bypass_guidance_embedding: bool = default("bypass_guidance_embedding")
    guidance_scale: float = default("guidance_scale")  # FLUX.1-dev's guidance input while training
    save_every: int = default("save_every")
    max_step_saves_to_keep: int = default("max_step_saves_to_keep")
    sample_every: int = default("sample_every")
    sample_steps: int = default("sample_steps")
    sample_prompts: list[str] = field(default_factory=list)
    resume: bool = True  # continue from the newest valid checkpoint in output_dir, if any
    device: str | None = None  # None: CUDA when available, else CPU
    progress_interval_seconds: float = 1.0
    # Speed and memory (see speed.py); None: what pays on the device for a run of this length.
    compile: str | None = default("compile")  # "off", "blocks" (the repeated blocks: most of the gain, quick) or "full"
    channels_last: bool | None = None  # UNet convolutions in NHWC layout
    attention: str = "sdpa"  # "sdpa": PyTorch's fused attention kernels; "eager": plain matmuls, to compare
    quantize_base: str | None = default(
        "quantize_base"
    )  # "fp8", "int8", "nf4": torchao-quantized frozen base (memory.py)
    swap_blocks: int = default("swap_blocks")  # blocks whose frozen weights stay in host memory (memory.BlockSwap)
    mixed_precision: str | None = default("mixed_precision")  # "bf16" or "no"; None: bf16 on a GPU, fp32 on a CPU
    fused_optimizer: bool = True  # one fused kernel for the whole AdamW update instead of one per tensor
    # Adapter shape (LoRA only).
    lora_type: str = default("lora_type")  # "lora", "dora" (weight-decomposed), "lokr" (Kronecker), "loha" (Hadamard)
    lora_targets: str = default(
        "lora_targets"
    )  # "attention", "all_linear", "all_linear+conv" (UNets: resnet convolutions too)
    lora_dropout: float = default("lora_dropout")
    # Data order: epochs visit every image `repeats` times, shuffled, one bucket per batch.
    repeats: int = default("repeats")
    # Loss and noise.
    loss_type: str = default("loss_type")  # "mse", "huber", "smooth_l1"
    huber_delta: float = default("huber_delta")  # where huber / smooth_l1 turn from quadratic to linear
    min_snr_gamma: float | None = default(
        "min_snr_gamma"
    )  # SD family: min-SNR-gamma weighting (5 is the paper's value)
    noise_offset: float = default(
        "noise_offset"
    )  # SD family: per-channel offset noise, for darker darks and brighter brights
    timestep_sampling: str = default("timestep_sampling")  # flow models: "uniform", "logit_normal", "sigmoid"
    logit_mean: float = default("logit_mean")
    logit_std: float = default("logit_std")
    sigmoid_scale: float = default("sigmoid_scale")
    timestep_shift: float | None = default(
        "timestep_shift"
    )  # flow models: None = the resolution-dependent shift FLUX uses; 1 = none
    # Weight averaging: the exported weights are the EMA when on.
    ema: bool = default("ema")
    ema_decay: float = default("ema_decay")
    ema_start_step: int = default("ema_start_step")
    # Text encoder LoRA (SD 1.5 and SDXL).
    train_text_encoder: bool = default("train_text_encoder")
    text_encoder_learning_rate: float | None = default("text_encoder_learning_rate")  # None: learning_rate
    # Prior preservation: the LoRA's output for the class prompt is held to the base model's.
    prior_preservation_class: str | None = default(
        "prior_preservation_class"
    )  # the class word that replaces the trigger word, e.g. "person"
    prior_preservation_weight: float = default("prior_preservation_weight")
    # Masked loss: weight each latent pixel by the image's alpha channel (transparent = not learned).
    masked_loss: bool = default("masked_loss")
    # Validation: a held-out share of the images (or those marked `validation`), loss at fixed seeds.
    validation_split: float = default("validation_split")
    # Crash safety: the worker's own snapshots, whatever save_every says.
    snapshot_every_seconds: float = 600.0
    snapshot_every_steps: int = 500

    @property
    def text_encoder_rate(self) -> float:
        """The text encoders' learning rate: their own, or the denoiser's."""
        return self.learning_rate if self.text_encoder_learning_rate is None else self.text_encoder_learning_rate

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"

    @property
    def cache_dir(self) -> Path:
        return Path(self.output_dir) / "cache"


@dataclass(frozen=True)
class Progress:
    stage: str
    step: int
    total_steps: int
    loss: float | None = None
    learning_rate: float | None = None
    elapsed_seconds: float = 0.0
    eta_seconds: int | None = None
    smoothed_loss: float | None = None  # exponential moving average of the step losses


@dataclass(frozen=True)
class TrainingResult:
    family: str
    weights_path: Path  # diffusers/PEFT layout LoRA, or the denoiser's weights for FULL
    steps_done: int
    final_loss: float | None
    kohya_path: Path | None = None
    resumed_from_step: int = 0
    captions: dict[str, str] = field(default_factory=dict)
    samples: list[Path] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


class TrainingCallbacks(Protocol):
    def on_stage(self, stage: str, processed: int, total: int) -> None: ...

    def on_progress(self, progress: Progress) -> None: ...

    def on_log(self, message: str) -> None: ...

    def on_sample(self, step: int, prompt: str, path: Path) -> None: ...

    def on_checkpoint(self, step: int, path: Path) -> None: ...

    def on_snapshot(self, step: int, path: Path) -> None:
        """A crash-safety snapshot (not a user checkpoint): keep it where a new attempt will find it."""

    def on_validation(self, step: int, loss: float) -> None: ...

    def should_cancel(self) -> bool: ...

    def should_suspend(self) -> bool:
        """True when the run should save a snapshot and stop, to be resumed later (a worker shutting down)."""
        ...


class SilentCallbacks:
    """Callbacks that ignore everything and never cancel, for scripts and tests that only want the result."""

    def on_stage(self, stage: str, processed: int, total: int) -> None:
        return None

    def on_progress(self, progress: Progress) -> None:
        return None

    def on_log(self, message: str) -> None:
        return None

    def on_sample(self, step: int, prompt: str, path: Path) -> None:
        return None

    def on_checkpoint(self, step: int, path: Path) -> None:
        return None

    def on_snapshot(self, step: int, path: Path) -> None:
        return None

    def on_validation(self, step: int, loss: float) -> None:
        return None

    def should_cancel(self) -> bool:
        return False

    def should_suspend(self) -> bool:
        return False
