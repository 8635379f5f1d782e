"""The kohya names ComfyUI maps for Qwen-Image: `comfy/lora.py`'s `comfy.model_base.QwenImage` branch
registers every weight of ComfyUI's Qwen-Image model (`comfy/ldm/qwen_image/model.py`, whose module names are
diffusers' own) bare, under `transformer.` and as `lycoris_<name with _>`; no `lora_transformer_` and no
conversion table."""

from __future__ import annotations

from training.engine.testing.comfyui import comfyui_same_name_lora_names


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_same_name_lora_names("QwenImageTransformer2DModel", denoiser_config)
