"""The kohya names ComfyUI maps for ERNIE-Image: its model (`comfy/ldm/ernie/model.py`) keeps diffusers' module
tree and names, so `model_lora_keys_unet`'s generic loop registers `lora_unet_<name, dots as _>` for every
weight of it (and `diffusion_model.<name>`); its `ErnieImage` branch adds `transformer.<name>`, the layout
diffusers' `save_lora_weights` writes. Neither `lycoris_` nor `lora_transformer_` is registered for it."""

from __future__ import annotations

from typing import Any


def lora_names(denoiser_config: dict) -> set[str]:
    import diffusers
    import torch

    values = {key: value for key, value in denoiser_config.items() if not key.startswith("_")}
    with torch.device("meta"):
        model: Any = diffusers.ErnieImageTransformer2DModel(**values)
    return {
        "lora_unet_" + name.replace(".", "_")
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
    }
