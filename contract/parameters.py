"""The training parameters: names, types, bounds, defaults and meaning, defined once.

Every path reads this table: the API's validation and seed 003's serializer (models_app), the
task's columns (models.py), the engine's `TrainingSpec` defaults, the admin's parameters form and
the README's table (a test keeps it equal to `markdown_table()`). Precedence when a training
starts: the request's explicit fields, then the model's stored parameters, then these defaults,
then the dependent defaults (`dependent_defaults`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

TRAINING_TYPES = ("LORA", "FULL")
OPTIMIZERS = ("adamw8bit", "adamw", "prodigy")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
CAPTIONING_STRATEGIES = ("trigger_only", "description", "filename", "automatic")
LORA_TYPES = ("lora", "dora", "lokr", "loha")
LORA_TARGETS = ("attention", "all_linear", "all_linear+conv")
LOSS_TYPES = ("mse", "huber", "smooth_l1")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal", "sigmoid")
QUANTIZATIONS = ("fp8", "int8", "nf4")  # frozen base weight formats (training/engine/memory.py)

# Lengths shared with the input rules (models_app/input_rules.py imports these).
LIST_MAX = 100  # entries of a list parameter
PATH_MAX = 500  # characters of a base model path or hub id
PROMPT_MAX = 2000  # characters of a prompt
URL_MAX = 2000  # characters of a URL


@dataclass(frozen=True)
class Parameter:
    kind: type | tuple[type, ...]
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    exclusive_minimum: bool = False  # the value must be above `minimum`, not equal to it
    min_length: int | None = None  # strings
    max_length: int = 200  # characters of a string, entries of a list
    entries: type | None = None  # a list's entry type: strings are typed one per line in the admin, others as JSON
    help: str = ""  # what it does, for the README, the admin's form and the API docs
    shown_default: str | None = None  # how the default reads where the value alone says too little
    group: str = "Training"  # the admin form's section

    def default_value(self) -> Any:
        """A fresh copy of the default (lists are never shared between callers)."""
        return copy.copy(self.default)

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        value = self.default
        if value is None or value == [] or value == "":
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            return f"`{value}`"
        return str(value)


def _p(
    kind: type | tuple[type, ...],
    default: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    **extra: Any,
) -> Parameter:
    return Parameter(kind, default, minimum, maximum, **extra)


NUMBER = (int, float)

PARAMETERS: dict[str, Parameter] = {
    # --- what is trained, and how long
    "training_type": _p(str, "LORA", choices=TRAINING_TYPES, help="`LORA` (peft adapters on the denoiser) or `FULL` (the whole denoiser)"),
    "rank": _p(int, 16, 1, 256, help="LoRA rank"),
    "lora_alpha": _p(NUMBER, None, 0.01, 1024, nullable=True, shown_default="= rank", help="LoRA alpha (scale = alpha / rank)"),
    "steps": _p(int, 1000, 1, 100_000, help="optimizer steps"),
    "batch_size": _p(int, 1, 1, 64, help="samples per micro-batch, over all of the task's GPUs (`gpus`)"),
    "gradient_accumulation": _p(int, 1, 1, 64, help="micro-batches per optimizer step"),
    "learning_rate": _p(NUMBER, 0.0001, 1e-7, 1.0, shown_default="0.0001 (1.0 with `prodigy`)", help="the denoiser's learning rate"),
    "optimizer": _p(str, "adamw8bit", choices=OPTIMIZERS, help="`adamw8bit`: 8-bit AdamW with CUDA and bitsandbytes (else AdamW, said in the log); `adamw`; `prodigy` (prodigyopt: finds its own step size; `learning_rate` then defaults to 1.0, the usual Prodigy setting)"),
    "lr_scheduler": _p(str, "constant_with_warmup", choices=LR_SCHEDULERS, help="how the learning rate moves over the run (warm-up: `lr_warmup_steps`)"),
    "lr_warmup_steps": _p(int, 0, 0, 100_000, help="steps of linear warm-up"),
    "resolution": _p(int, None, 32, 2048, nullable=True, shown_default="the model's own (512 SD 1.5, 1024 SDXL/FLUX/SD 3.5)", help="the area images are bucketed to"),
    "seed": _p(int, 42, 0, 2**31 - 1, help="same seed and data give the same weights"),
    "caption_dropout_rate": _p(NUMBER, 0.05, 0, 0.99, help="share of steps trained on the empty caption"),
    "gradient_checkpointing": _p(bool, False, group="Speed and memory", help="trade compute for activation memory"),
    # --- speed and memory (training/engine/speed.py); null picks what pays on the worker's device
    "compile": _p(str, None, choices=("off", "blocks", "full"), nullable=True, group="Speed and memory", shown_default="automatic", help="`off`, `blocks` (torch.compile of the repeated transformer blocks), `full`; automatic: `blocks` on a GPU for runs of 300+ steps, else `off` (never automatic on a CPU, where compiling takes minutes and does not pay)"),
    "quantize_base": _p(str, None, choices=QUANTIZATIONS, nullable=True, group="Speed and memory", help="the frozen base weights stored quantized by torchao, LoRA only: `fp8` (float8, half of bf16's memory), `int8` (half), `nf4` (QLoRA's 4-bit NormalFloat, about a quarter)"),
    "swap_blocks": _p(int, 0, 0, 200, group="Speed and memory", help="transformer models: this many of the denoiser's blocks stay in host memory and are copied to the GPU only while they run (block swapping, for cards smaller than the model); turns `gradient_checkpointing` on and `compile` off; LoRA only"),
    "gpus": _p(int, 1, 1, 64, group="Speed and memory", help="GPUs of one worker machine this training runs on: LoRA data-parallel (DDP), FULL sharded (FSDP2); `batch_size` or `gradient_accumulation` must be a multiple of it; refused when no worker has that many"),
    "mixed_precision": _p(str, None, choices=("bf16", "no"), nullable=True, group="Speed and memory", shown_default="automatic", help="`bf16` or `no`; automatic: bf16 autocast on a GPU, fp32 on a CPU"),
    # --- conditioning
    "guidance_scale": _p(NUMBER, 1.0, 0, 30, group="Captions and conditioning", help="FLUX.1-dev's guidance input while training"),
    "bypass_guidance_embedding": _p(bool, False, group="Captions and conditioning", help="train FLUX without its guidance embedding"),
    "preprocessing_captioning_strategy": _p(str, "trigger_only", choices=CAPTIONING_STRATEGIES, group="Captions and conditioning", help="`trigger_only`, `description` (each image's caption), `filename` (a `.txt` beside the imported image, kohya style), `automatic` (a local captioning model, `TRAINING_CAPTION_MODEL`, prompted with `preprocessing_captioning_prompt`)"),
    "preprocessing_captioning_prompt": _p(str, None, nullable=True, max_length=PROMPT_MAX, group="Captions and conditioning", help="the captioning model's instruction for `automatic`"),
    "preprocessing_transforms": _p(list, None, nullable=True, max_length=LIST_MAX, entries=dict, group="Captions and conditioning", help='list of `{"type": "resize", "size": 768}`, `center_crop` / `random_crop` (`size`, or `width` and `height`), `horizontal_flip` (`p`)'),
    # --- outputs
    "save_every": _p(int, 2000, 1, 100_000, group="Outputs", help="steps between the user's checkpoints (weights, optimizer, schedule, step, RNG), listed with the task; the worker also keeps its own crash-safety snapshot every 10 minutes or 500 steps whatever this says (never listed, not counted in `max_step_saves_to_keep`)"),
    "max_step_saves_to_keep": _p(int, 4, 1, 100, group="Outputs", help="checkpoints kept, newest first"),
    "sample_every": _p(int, 250, 1, 100_000, group="Outputs", help="steps between sample images (stored with the task) and validation losses"),
    "sample_steps": _p(int, 25, 1, 200, group="Outputs", help="denoising steps of each sample"),
    "sample_prompts": _p(list, [], max_length=LIST_MAX, entries=str, group="Outputs", help="the prompts sampled during training"),
    "base_model_path": _p(str, None, nullable=True, max_length=PATH_MAX, shown_default="`TRAINING_DEFAULT_BASE_MODEL`", help='the base model: a folder under `TRAINING_BASE_MODEL_ROOTS` or a hub id; see "Base models"'),
    "priority": _p(int, 1, 0, 3, group="Outputs", help="queue priority: 0 low, 1 normal, 2 high, 3 urgent"),
    "webhook_url": _p(str, "", nullable=True, max_length=URL_MAX, group="Outputs", help="where progress notifications are POSTed, signed"),
    # --- adapter shape (LoRA only)
    "lora_type": _p(str, "lora", choices=LORA_TYPES, group="Adapter", help="adapter kind (LoRA only): `lora`, `dora` (weight-decomposed: magnitude and direction learned apart, often closer to full fine-tuning at the same rank), `lokr` (Kronecker product: fewer parameters for a given rank), `loha` (Hadamard product: more expressive per parameter, styles)"),
    "lora_targets": _p(str, "all_linear", choices=LORA_TARGETS, group="Adapter", help="the layers adapted: `attention` (smallest, for a light touch), `all_linear` (attention and feed-forward), `all_linear+conv` (UNets: the resnet convolutions too, for textures and styles)"),
    "lora_dropout": _p(NUMBER, 0.0, 0, 0.9, group="Adapter", help="dropout on the adapter's input; against overfitting a small dataset"),
    # --- data order
    "repeats": _p(int, 1, 1, 100, help="times each image is seen per epoch (kohya's folder repeats); the order within an epoch is shuffled"),
    # --- loss and noise
    "loss_type": _p(str, "mse", choices=LOSS_TYPES, group="Loss and noise", help="`mse`, `huber` or `smooth_l1` (quadratic below `huber_delta`, linear above: less pulled by outlier images and noisy steps)"),
    "huber_delta": _p(NUMBER, 0.1, 0, 10, exclusive_minimum=True, group="Loss and noise", help="where `huber` and `smooth_l1` turn from quadratic to linear"),
    "min_snr_gamma": _p(NUMBER, None, 0.1, 50, nullable=True, group="Loss and noise", help="SD family: min-SNR-gamma loss weighting (5 is the paper's value); faster, steadier convergence"),
    "noise_offset": _p(NUMBER, 0.0, 0, 1, group="Loss and noise", help="SD family: per-channel offset noise (about 0.05 to 0.1); for darker darks and brighter brights"),
    "timestep_sampling": _p(str, "logit_normal", choices=TIMESTEP_SAMPLINGS, group="Loss and noise", help="flow models (FLUX, SD 3.5): `uniform`, `logit_normal` (middle timesteps more often) or `sigmoid`"),
    "logit_mean": _p(NUMBER, 0.0, -5, 5, group="Loss and noise", help="`logit_normal`'s mean"),
    "logit_std": _p(NUMBER, 1.0, 0.01, 5, group="Loss and noise", help="`logit_normal`'s standard deviation"),
    "sigmoid_scale": _p(NUMBER, 1.0, 0.01, 10, group="Loss and noise", help="`sigmoid`'s scale"),
    "timestep_shift": _p(NUMBER, None, 0.1, 20, nullable=True, group="Loss and noise", shown_default="automatic", help="flow models: the timestep shift; automatic: the model's scheduler's (FLUX: resolution-dependent; SD 3.5: 3); 1 = no shift"),
    # --- weight averaging
    "ema": _p(bool, False, group="Weight averaging", help="keep an exponential moving average of the trained weights and export it instead of the last step's; smoother results, a little more memory"),
    "ema_decay": _p(NUMBER, 0.999, 0.5, 0.99999, group="Weight averaging", help="the average's decay per step"),
    "ema_start_step": _p(int, 0, 0, 100_000, group="Weight averaging", help="the step the average starts at"),
    # --- text encoder LoRA (SD 1.5 and SDXL)
    "train_text_encoder": _p(bool, False, group="Adapter", help="SD 1.5 and SDXL: a LoRA on the text encoder(s) too, for concepts the prompt words do not reach"),
    "text_encoder_learning_rate": _p(NUMBER, None, 1e-7, 1.0, nullable=True, group="Adapter", shown_default="= `learning_rate`", help="the text encoders' learning rate"),
    # --- prior preservation
    "prior_preservation_class": _p(str, None, nullable=True, min_length=1, max_length=100, group="Loss and noise", help="the class word (e.g. `person`) that replaces the trigger word: the LoRA's output for it is held to the base model's, so the class is not overwritten by the subject"),
    "prior_preservation_weight": _p(NUMBER, 1.0, 0, 10, group="Loss and noise", help="the weight of the prior-preservation loss"),
    "masked_loss": _p(bool, False, group="Loss and noise", help="weight each latent pixel by the image's alpha channel (transparent = not learned); for cut-out products and subjects"),
    # --- validation
    "validation_split": _p(NUMBER, 0.0, 0, 0.5, group="Outputs", help="a share of the images held out, never trained on; their loss at fixed seeds is measured every `sample_every` steps and drawn beside the training loss, to spot overfitting"),
    "validation_images": _p(list, [], max_length=LIST_MAX, entries=str, group="Outputs", help="training image ids (`asset_…`) held out as above; an id that is not one of the model's training images, or a list that leaves no image to train on, is refused at start (400)"),
}  # fmt: skip

# Parameters whose text may span lines (prompts); every other string is one line.
MULTILINE = frozenset({"preprocessing_captioning_prompt"})


def default(name: str) -> Any:
    """The default of one parameter (a fresh copy)."""
    return PARAMETERS[name].default_value()


def effective_parameters(overrides: dict[str, Any], *, default_base_model: str) -> dict[str, Any]:
    """Defaults merged with already validated overrides: what a task started now would use."""
    merged = {name: spec.default_value() for name, spec in PARAMETERS.items()}
    merged["base_model_path"] = default_base_model
    given = {k: v for k, v in overrides.items() if v is not None or PARAMETERS[k].nullable}
    merged.update(given)
    if merged["base_model_path"] is None:
        merged["base_model_path"] = default_base_model
    if merged["webhook_url"] is None:
        merged["webhook_url"] = ""
    merged.update(dependent_defaults(merged, given=set(given)))
    return merged


def dependent_defaults(merged: dict[str, Any], *, given: set[str]) -> dict[str, Any]:
    """The defaults that depend on another parameter, for the parameters the user did not set.

    Every such rule lives here, so the quote, the start and the docs agree:
    - `optimizer: prodigy` finds its own step size, and expects a learning rate of 1.0.
    """
    derived: dict[str, Any] = {}
    if "learning_rate" not in given and merged["optimizer"] == "prodigy":
        derived["learning_rate"] = 1.0
    return derived


def markdown_table() -> str:
    """The README's parameter table, generated from this one (tests/test_readme.py keeps them equal)."""
    lines = ["| parameter | default | range | meaning |", "|---|---|---|---|"]
    for name, spec in PARAMETERS.items():
        lines.append(f"| `{name}` | {spec.default_text()} | {range_text(spec)} | {spec.help} |")
    return "\n".join(lines)


def range_text(spec: Parameter) -> str:
    """The accepted values in words: the choices, the bounds, or the kind."""
    if spec.choices is not None:
        return " / ".join(f"`{choice}`" for choice in spec.choices)
    if spec.minimum is not None and spec.maximum is not None:
        low = f"above {_number(spec.minimum)}" if spec.exclusive_minimum else _number(spec.minimum)
        return f"{low} to {_number(spec.maximum)}"
    kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    if bool in kinds:
        return "on / off"
    if list in kinds:
        return f"up to {spec.max_length} entries"
    return f"text, up to {spec.max_length} characters"


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}".replace(",", " ") if abs(value) >= 10_000 else str(int(value))
    return f"{value:g}"


def global_batch_problem(gpus: int, batch_size: int, gradient_accumulation: int) -> str | None:
    """Why a global batch cannot be split over `gpus` ranks, or None: each micro-batch's images are
    split evenly, or whole micro-batches dealt out in turn (training/engine/distributed.py)."""
    accumulation = max(1, gradient_accumulation)
    if gpus > 1 and batch_size % gpus and accumulation % gpus:
        return (
            f"with gpus {gpus}, batch_size ({batch_size}) or gradient_accumulation ({accumulation}) must be a "
            f"multiple of {gpus}: the global batch is split evenly over the GPUs"
        )
    return None


GPUS_AND_SWAP = (
    "swap_blocks does not combine with gpus above 1: a data-parallel model keeps its weights on its GPUs; "
    "use quantize_base to fit the model instead"
)
