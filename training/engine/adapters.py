"""The trained adapter: which peft method (LoRA, DoRA, LoKr, LoHa) on which of the denoiser's modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from training.engine.families.base import Family
from training.engine.spec import TrainingSpec


def adapter_config(spec: TrainingSpec, family: Family, *, alpha: float) -> Any:
    """The peft config for the spec's `lora_type` on the family's `lora_targets` preset."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    targets = family.lora_target_pattern(spec.lora_targets)
    if spec.lora_type == "lokr":
        return LoKrConfig(r=spec.rank, alpha=alpha, target_modules=targets, module_dropout=spec.lora_dropout)  # type: ignore[arg-type]  # peft annotates alpha as int; a float alpha works (scale = alpha / r)
    if spec.lora_type == "loha":
        return LoHaConfig(r=spec.rank, alpha=alpha, target_modules=targets, module_dropout=spec.lora_dropout)  # type: ignore[arg-type]  # peft annotates alpha as int; a float alpha works (scale = alpha / r)
    return LoraConfig(
        r=spec.rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates alpha as int; a float alpha works (scale = alpha / r)
        lora_dropout=spec.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
        use_dora=spec.lora_type == "dora",
    )


def adapter_state_dict(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's trained tensors under peft's names (without the adapter name)."""
    from peft.utils import get_peft_model_state_dict

    return dict(get_peft_model_state_dict(denoiser))


def adapter_metadata(denoiser: torch.nn.Module) -> dict[str, Any]:
    """The adapter's config as a JSON-able dict (what diffusers stores beside LoRA weights)."""
    # torch types the attributes a Module does not declare as Tensor | Module; peft_config is the dict of
    # PeftConfig objects that diffusers' and transformers' PeftAdapterMixin set.
    peft_configs: dict[str, Any] = denoiser.peft_config  # type: ignore[assignment]
    config = peft_configs["default"].to_dict()
    targets = config.get("target_modules")
    if isinstance(targets, (set, list, tuple)):
        config["target_modules"] = sorted(targets)
    for key, value in list(config.items()):
        if isinstance(value, set):
            config[key] = sorted(value)
    return dict(config)


def add_adapter(model: torch.nn.Module, config: Any) -> None:
    """Trainable adapters (peft's "default") on `model`: through diffusers' PeftAdapterMixin where the model has
    it (every family's denoiser but PRX's), else with peft's own injection, which that mixin wraps, keeping the
    config on the model where the mixin keeps it (`peft_config`, which `adapter_metadata` reads)."""
    target: Any = model  # torch types undeclared Module attributes as Tensor | Module
    if hasattr(target, "add_adapter"):
        target.add_adapter(config)
        return
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, target, adapter_name="default")
    target.peft_config = {"default": config}


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base model's own output, the adapters bypassed (prior preservation compares against it)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
