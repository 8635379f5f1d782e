"""The kohya names ComfyUI maps for Z-Image.

`comfy/lora.py`, the `comfy.model_base.Lumina2` branch (ComfyUI's `ZImage` model is a `Lumina2`), and
`comfy/utils.py`, `z_image_to_diffusers`: the diffusers `ZImageTransformer2DModel` names are registered
under `diffusion_model.`, `transformer.`, bare, and `lycoris_<name with _>` (not `lora_transformer_`).
It reads `n_layers`, `dim` and `n_refiner_layers` (default 2; `model_detection` does not set it); q, k
and v land on row ranges of the fused `attention.qkv`, `attention.to_out.0` on `attention.out`; the
other block names are the same on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.engine.testing.comfyui import ZIMAGE_PREFIX, ComfyTarget

ZIMAGE_BLOCK_MODULES: dict[str, str] = {
    "attention.norm_q": "attention.q_norm",
    "attention.norm_k": "attention.k_norm",
    "attention.to_out.0": "attention.out",
    **{name: name for name in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2")},
    **{name: name for name in ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0")},
}


ZIMAGE_TOP_LEVEL_MODULES: dict[str, str] = {
    "all_final_layer.2-1.linear": "final_layer.linear",
    "all_final_layer.2-1.adaLN_modulation.1": "final_layer.adaLN_modulation.1",
    "all_x_embedder.2-1": "x_embedder",
    "cap_embedder.1": "cap_embedder.1",
    "t_embedder.mlp.0": "t_embedder.mlp.0",
    "t_embedder.mlp.2": "t_embedder.mlp.2",
}


def comfyui_zimage_diffusers_to_comfy(transformer_config: Mapping[str, Any]) -> dict[str, ComfyTarget]:
    """diffusers module name -> the ComfyUI weight (and row slice) it lands on."""
    hidden = int(transformer_config.get("dim", 3840))
    refiners = 2  # ComfyUI's default: its model detection does not read the refiner count
    blocks = [f"layers.{i}" for i in range(int(transformer_config.get("n_layers", 30)))]
    blocks += [f"{kind}.{i}" for kind in ("noise_refiner", "context_refiner") for i in range(refiners)]
    names: dict[str, ComfyTarget] = {}
    for block in blocks:
        for part, projection in enumerate("qkv"):
            rows = (part * hidden, hidden)
            names[f"{block}.attention.to_{projection}"] = ComfyTarget(
                f"diffusion_model.{block}.attention.qkv.weight", rows
            )
        for child, comfy in ZIMAGE_BLOCK_MODULES.items():
            names[f"{block}.{child}"] = ComfyTarget(f"diffusion_model.{block}.{comfy}.weight")
    for child, comfy in ZIMAGE_TOP_LEVEL_MODULES.items():
        names[child] = ComfyTarget(f"diffusion_model.{comfy}.weight")
    return names


def comfyui_zimage_key_map(transformer_config: Mapping[str, Any]) -> dict[str, ComfyTarget]:
    """`lycoris_<diffusers name with _>` (what we write for Z-Image) -> the ComfyUI weight."""
    return {
        ZIMAGE_PREFIX + diffusers.replace(".", "_"): target
        for diffusers, target in comfyui_zimage_diffusers_to_comfy(transformer_config).items()
    }


def lora_names(denoiser_config: dict) -> set[str]:
    return set(comfyui_zimage_key_map(denoiser_config))
