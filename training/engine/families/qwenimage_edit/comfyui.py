"""The kohya names ComfyUI maps for Qwen-Image-Edit: ComfyUI loads 2509 and 2511 as its Qwen-Image model
(`comfy/model_detection.py`, the same `comfy.model_base.QwenImage` class; 2511 only marks its reference method),
so `comfy/lora.py`'s Qwen-Image branch applies unchanged."""

from __future__ import annotations

from training.engine.testing.comfyui import comfyui_same_name_lora_names


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_same_name_lora_names("QwenImageTransformer2DModel", denoiser_config)
