"""Exporting trained weights: LoRA in diffusers/PEFT layout and in kohya/ComfyUI layout, with metadata."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS_NAME = "lora_kohya.safetensors"
FULL_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# diffusers prefixes the denoiser's keys with its component name; kohya with `lora_unet_` for a UNet
# and `lora_transformer_` for a transformer (the names ComfyUI reads for diffusers-named modules).
KOHYA_PREFIX = {"unet": "lora_unet_", "transformer": "lora_transformer_"}
LORA_KEY = re.compile(r"^(?P<component>unet|transformer)\.(?P<module>.+)\.lora_(?P<side>A|B)\.weight$")


def add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Rewrite a safetensors file with `metadata` merged into its header."""
    with safe_open(str(path), framework="pt") as handle:
        existing = handle.metadata() or {}
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={**existing, **metadata})


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def to_kohya(diffusers_state: dict[str, torch.Tensor], *, alpha: float) -> dict[str, torch.Tensor]:
    """`unet.down_blocks.0…to_q.lora_A.weight` -> `lora_unet_down_blocks_0…to_q.lora_down.weight` (+ `.alpha`)."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in diffusers_state.items():
        match = LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"unexpected LoRA key {key!r}")
        name = KOHYA_PREFIX[match["component"]] + match["module"].replace(".", "_")
        converted[f"{name}.lora_{'down' if match['side'] == 'A' else 'up'}.weight"] = tensor
        converted[f"{name}.alpha"] = torch.tensor(float(alpha))
    return converted


def from_kohya(
    kohya_state: dict[str, torch.Tensor], module_names: list[str], component: str
) -> dict[str, torch.Tensor]:
    """The inverse of `to_kohya`, given the dotted names of the modules the LoRA was trained on."""
    by_flat = {KOHYA_PREFIX[component] + name.replace(".", "_"): name for name in module_names}
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in kohya_state.items():
        flat, _, suffix = key.partition(".")
        if suffix == "alpha":
            continue
        if flat not in by_flat:
            raise ValueError(f"kohya key {key!r} names no known module")
        side = {"lora_down.weight": "A", "lora_up.weight": "B"}[suffix]
        converted[f"{component}.{by_flat[flat]}.lora_{side}.weight"] = tensor
    return converted


def write_kohya(diffusers_path: Path, kohya_path: Path, *, alpha: float, metadata: dict[str, str]) -> Path:
    state = load_file(str(diffusers_path))
    save_file(to_kohya(state, alpha=alpha), str(kohya_path), metadata={**metadata, "format": "pt", "layout": "kohya"})
    return kohya_path
