"""The kohya names ComfyUI maps for Qwen-Image 2.1: its `qwen_image21` model (`comfy/ldm/qwen_image21/model.py`,
diffusers' module names, the MLP's gate_layer and proj fused into one `img_mlp.gate_up` at load) goes through
`comfy/lora.py`'s Qwen-Image branch, which maps each name bare, under `transformer.` and as `lycoris_<name with
_>`, and addresses the fused `gate_up` by its `gate_layer` and `proj` halves: every diffusers name is mapped."""

from __future__ import annotations

from training.engine.testing.comfyui import comfyui_same_name_lora_names


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_same_name_lora_names("QwenImage21Transformer2DModel", denoiser_config)
