"""Validation of the training parameters a model may set (seed 003's `TrainingTask` and our levers).

The table itself (names, types, bounds, defaults, meaning) is `contract/parameters.py`, shared with
the engine; this module adds the checks that need the domain: text rules, webhook and base model
path rules, asset ids. `Model.parameters` holds overrides only; a task gets the defaults merged with
them when it starts (`effective_parameters`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from contract.parameters import (
    MULTILINE,
    PARAMETERS,
    Parameter,
    dependent_defaults,
    effective_parameters,
)
from contract.transforms import InvalidTransform, validate_transforms
from models_app.errors import InvalidInput
from models_app.input_rules import (
    PROMPT_MAX,
    path_inside_roots,
    public_id_plausible,
    text_check,
    url_check,
)

__all__ = ["PARAMETERS", "Parameter", "dependent_defaults", "effective_parameters", "validate_parameters"]


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
        try:
            validate_transforms(value)
        except InvalidTransform as exc:
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
