"""The kohya names ComfyUI maps for FLUX.2: `comfy/model_base.py`'s `Flux2` subclasses `Flux` too, so a FLUX.2
model's LoRA names come from the same `flux_to_diffusers` table, which routes FLUX.2's spellings (the single
blocks' fused `to_qkv_mlp_proj` and `to_out` onto `linear1` and `linear2`, the SwiGLU `ff.linear_in`/
`linear_out` onto the MLPs). Its shared modulation layers and `time_guidance_embed` are not in the table;
our adapters never target them."""

from __future__ import annotations

from training.engine.families.flux.comfyui import comfyui_flux_lora_names


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_flux_lora_names(denoiser_config)
