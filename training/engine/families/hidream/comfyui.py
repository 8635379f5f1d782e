"""The kohya names ComfyUI maps for HiDream-I1: comfy/ldm/hidream/model.py ports the same original code as
diffusers, so its module names are diffusers' own, registered as `lycoris_<name with _>`."""

from __future__ import annotations

from training.engine.testing.comfyui import comfyui_same_name_lora_names


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_same_name_lora_names("HiDreamImageTransformer2DModel", denoiser_config)
