"""The kohya names ComfyUI maps for Chroma: `comfy/model_base.py`'s `Chroma` subclasses `Flux`, so
`model_lora_keys_unet` maps a Chroma model's LoRA names with `flux_to_diffusers` and the same
`lora_transformer_` prefix; the modulation targets that map names (Chroma has none: its
`distilled_guidance_layer` computes them) are dropped as absent."""

from __future__ import annotations

from training.engine.families.flux.comfyui import comfyui_flux_lora_names


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_flux_lora_names(denoiser_config)
