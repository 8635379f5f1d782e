"""The training parameters a model may set, their types, bounds and defaults (seed 003's `TrainingTask`).

`Model.parameters` holds overrides only; a task gets the defaults merged with them when it starts.
One table, so the API, the admin and the commands validate alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from models_app.errors import InvalidInput
from models_app.input_rules import (
    LIST_MAX,
    PATH_MAX,
    PROMPT_MAX,
    URL_MAX,
    path_inside_roots,
    public_id_plausible,
    text_check,
    url_check,
)
from training.engine.spec import LORA_TARGETS, LORA_TYPES, LOSS_TYPES, TIMESTEP_SAMPLINGS


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


PARAMETERS: dict[str, Parameter] = {
    "training_type": Parameter(str, "LORA", choices=("LORA", "FULL")),
    "rank": Parameter(int, 16, 1, 256),
    "lora_alpha": Parameter((int, float), None, 0.01, 1024, nullable=True),
    "steps": Parameter(int, 1000, 1, 100_000),
    "learning_rate": Parameter((int, float), 0.0001, 1e-7, 1.0),
    "batch_size": Parameter(int, 1, 1, 64),
    "gradient_accumulation": Parameter(int, 1, 1, 64),
    "optimizer": Parameter(str, "adamw8bit", choices=("adamw8bit", "adamw", "prodigy")),
    "lr_scheduler": Parameter(
        str, "constant_with_warmup", choices=("constant", "constant_with_warmup", "linear", "cosine")
    ),
    "lr_warmup_steps": Parameter(int, 0, 0, 100_000),
    "caption_dropout_rate": Parameter((int, float), 0.05, 0, 0.99),
    "gradient_checkpointing": Parameter(bool, False),
    "guidance_scale": Parameter((int, float), 1.0, 0, 30),
    # Speed and memory (training/engine/speed.py); null picks what pays on the worker's device.
    "compile": Parameter(str, None, choices=("off", "blocks", "full"), nullable=True),
    "quantize_base": Parameter(str, None, choices=("fp8",), nullable=True),
    "mixed_precision": Parameter(str, None, choices=("bf16", "no"), nullable=True),
    "resolution": Parameter(int, None, 32, 2048, nullable=True),
    "seed": Parameter(int, 42, 0, 2**31 - 1),
    "save_every": Parameter(int, 2000, 1, 100_000),
    "max_step_saves_to_keep": Parameter(int, 4, 1, 100),
    "sample_every": Parameter(int, 250, 1, 100_000),
    "sample_steps": Parameter(int, 25, 1, 200),
    "sample_prompts": Parameter(list, [], max_length=LIST_MAX),
    "base_model_path": Parameter(str, None, nullable=True, max_length=PATH_MAX),
    "bypass_guidance_embedding": Parameter(bool, False),
    "preprocessing_transforms": Parameter(list, None, nullable=True, max_length=LIST_MAX),
    "preprocessing_captioning_strategy": Parameter(
        str, "trigger_only", choices=("trigger_only", "description", "filename", "automatic")
    ),
    "preprocessing_captioning_prompt": Parameter(str, None, nullable=True, max_length=PROMPT_MAX),
    "priority": Parameter(int, 1, 0, 3),
    "webhook_url": Parameter(str, "", nullable=True, max_length=URL_MAX),
    # Adapter shape (LoRA only).
    "lora_type": Parameter(str, "lora", choices=LORA_TYPES),
    "lora_targets": Parameter(str, "all_linear", choices=LORA_TARGETS),
    "lora_dropout": Parameter((int, float), 0.0, 0, 0.9),
    # Data order: each image seen `repeats` times per epoch.
    "repeats": Parameter(int, 1, 1, 100),
    # Loss and noise.
    "loss_type": Parameter(str, "mse", choices=LOSS_TYPES),
    "huber_delta": Parameter((int, float), 0.1, 0, 10, exclusive_minimum=True),
    "min_snr_gamma": Parameter((int, float), None, 0.1, 50, nullable=True),
    "noise_offset": Parameter((int, float), 0.0, 0, 1),
    "timestep_sampling": Parameter(str, "logit_normal", choices=TIMESTEP_SAMPLINGS),
    "logit_mean": Parameter((int, float), 0.0, -5, 5),
    "logit_std": Parameter((int, float), 1.0, 0.01, 5),
    "sigmoid_scale": Parameter((int, float), 1.0, 0.01, 10),
    "timestep_shift": Parameter((int, float), None, 0.1, 20, nullable=True),  # null: automatic
    # Weight averaging.
    "ema": Parameter(bool, False),
    "ema_decay": Parameter((int, float), 0.999, 0.5, 0.99999),
    "ema_start_step": Parameter(int, 0, 0, 100_000),
    # Text encoder LoRA (SD 1.5 and SDXL).
    "train_text_encoder": Parameter(bool, False),
    "text_encoder_learning_rate": Parameter((int, float), None, 1e-7, 1.0, nullable=True),  # null: learning_rate
    # Prior preservation.
    "prior_preservation_class": Parameter(str, None, nullable=True, min_length=1, max_length=100),
    "prior_preservation_weight": Parameter((int, float), 1.0, 0, 10),
    "masked_loss": Parameter(bool, False),
    # Validation: a held-out share of the images, and/or these training images (asset ids).
    "validation_split": Parameter((int, float), 0.0, 0, 0.5),
    "validation_images": Parameter(list, [], max_length=LIST_MAX),
}


# Parameters whose text may span lines (prompts); every other string is one line.
MULTILINE = {"preprocessing_captioning_prompt"}


def validate_parameters(values: Any, *, field: str = "parameters") -> dict[str, Any]:
    """The given overrides, checked; raises InvalidInput naming the first bad key."""
    if not isinstance(values, dict):
        raise InvalidInput(f"{field} must be an object of parameter names to values", field=field)
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise InvalidInput(
            f"unknown parameter {unknown[0]!r}; known parameters: {', '.join(sorted(PARAMETERS))}",
            field=f"{field}.{unknown[0]}",
        )
    clean: dict[str, Any] = {}
    for name, value in values.items():
        clean[name] = _check(name, PARAMETERS[name], value, field=f"{field}.{name}")
    return clean


def _check(name: str, spec: Parameter, value: Any, *, field: str) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise InvalidInput(f"{name} cannot be null", field=field)
    kinds: tuple[type[Any], ...] = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    # bool is an int in Python; a JSON true is never a valid number here.
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidInput(f"{name} must be {_kind_name(kinds)}, not a boolean", field=field)
    if not isinstance(value, kinds):
        raise InvalidInput(f"{name} must be {_kind_name(kinds)}, got {type(value).__name__}", field=field)
    if spec.choices is not None and value not in spec.choices:
        raise InvalidInput(f"{name} must be one of {', '.join(map(str, spec.choices))}; got {value!r}", field=field)
    if spec.minimum is not None and spec.exclusive_minimum and value <= spec.minimum:
        raise InvalidInput(f"{name} must be greater than {spec.minimum}; got {value}", field=field)
    if spec.minimum is not None and value < spec.minimum:
        raise InvalidInput(f"{name} must be at least {spec.minimum}; got {value}", field=field)
    if spec.maximum is not None and value > spec.maximum:
        raise InvalidInput(f"{name} must be at most {spec.maximum}; got {value}", field=field)
    if isinstance(value, str):
        text_check(value, field=field, label=name, max_length=spec.max_length, multiline=name in MULTILINE)
    if isinstance(value, list) and len(value) > spec.max_length:
        raise InvalidInput(f"{name} may have at most {spec.max_length} entries; got {len(value)}", field=field)
    if spec.min_length is not None and len(value) < spec.min_length:
        raise InvalidInput(f"{name} must be at least {spec.min_length} character(s) long", field=field)
    if name == "webhook_url" and value:
        # Refused now, at configuration, and checked again by the sender at every delivery.
        url_check(value, field=field, allow_private=settings.IMAGE_URL_ALLOW_PRIVATE_HOSTS, must_resolve=False)
    if name == "base_model_path":
        _check_base_model_path(value, field=field)
    if name == "sample_prompts":
        if not all(isinstance(p, str) for p in value):
            raise InvalidInput("sample_prompts must be a list of strings", field=field)
        for index, prompt in enumerate(value):
            text_check(
                prompt, field=f"{field}[{index}]", label=f"{name}[{index}]", max_length=PROMPT_MAX, multiline=True
            )
    if name == "validation_images":
        for index, item in enumerate(value):
            if not public_id_plausible(item) or not item.startswith("asset_"):
                raise InvalidInput(
                    f"validation_images[{index}] must be a training image id (asset_…); got {item!r}", field=field
                )
        if len(set(value)) != len(value):
            twice = next(item for item in value if value.count(item) > 1)
            raise InvalidInput(f"validation_images lists {twice} more than once", field=field)
    if name == "preprocessing_transforms":
        from training.engine.data import validate_transforms
        from training.engine.errors import EngineError

        try:
            validate_transforms(value)
        except EngineError as exc:
            raise InvalidInput(str(exc), field=field) from exc
    return value


def _check_base_model_path(value: str, *, field: str) -> None:
    """Path rules at the moment the value is stored: a folder given by path (absolute, `./`, `~`, `..`)
    must lie inside TRAINING_BASE_MODEL_ROOTS. Plain relative names (a folder under a root, or a hub
    id) are resolved when a training starts."""
    text = value.strip()
    if text.startswith(("/", ".", "~")) or ".." in text.split("/"):
        path_inside_roots(text, field=field, roots=settings.TRAINING_BASE_MODEL_ROOTS, what="model folders")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list"}
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def effective_parameters(overrides: dict[str, Any], *, default_base_model: str) -> dict[str, Any]:
    """Defaults merged with a model's overrides: what a task started now would use."""
    merged = {name: copy.copy(spec.default) for name, spec in PARAMETERS.items()}
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
