"""The kohya names ComfyUI maps for FLUX.1 (and the models that subclass its loader: Chroma, FLUX.2).

- `comfy/lora.py`, `model_lora_keys_unet`: for a `comfy.model_base.Flux` model ComfyUI maps
  `comfy.utils.flux_to_diffusers(unet_config)` under the prefix `lora_transformer_` (its comment:
  "onetrainer").
- `comfy/utils.py`, `flux_to_diffusers`: the diffusers `FluxTransformer2DModel` <-> BFL (`double_blocks`/
  `single_blocks`) names; q, k, v (and the single blocks' `proj_mlp`) land on row ranges of the fused
  `qkv` / `linear1` weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.engine.testing.comfyui import FLUX_PREFIX, ComfyTarget

FLUX_DOUBLE_BLOCK_MODULES: dict[str, str] = {
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    # LyCORIS names for the same MLPs.
    "ff.linear_in": "img_mlp.0",
    "ff.linear_out": "img_mlp.2",
    "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
}


FLUX_SINGLE_BLOCK_MODULES: dict[str, str] = {
    "norm.linear": "modulation.lin",
    "proj_out": "linear2",
    "attn.norm_q": "norm.query_norm",
    "attn.norm_k": "norm.key_norm",
    # FLUX.2 spellings, routed by the same table.
    "attn.to_qkv_mlp_proj": "linear1",
    "attn.to_out": "linear2",
}


FLUX_TOP_LEVEL_MODULES: dict[str, str] = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear",
    "controlnet_x_embedder": "pos_embed_input",
}


def comfyui_flux_diffusers_to_bfl(transformer_config: Mapping[str, Any]) -> dict[str, ComfyTarget]:
    """diffusers module name -> the ComfyUI weight (and row slice) it lands on."""
    if "depth" in transformer_config:  # already ComfyUI's own fields
        double = int(transformer_config["depth"])
        single = int(transformer_config.get("depth_single_blocks", 0))
        hidden = int(transformer_config["hidden_size"])
    else:
        double = int(transformer_config.get("num_layers", 19))
        single = int(transformer_config.get("num_single_layers", 38))
        hidden = int(transformer_config.get("num_attention_heads", 24)) * int(
            transformer_config.get("attention_head_dim", 128)
        )
    names: dict[str, ComfyTarget] = {}
    for index in range(double):
        source, target = f"transformer_blocks.{index}", f"diffusion_model.double_blocks.{index}"
        for part, projection in enumerate("qkv"):
            rows = (part * hidden, hidden)
            names[f"{source}.attn.to_{projection}"] = ComfyTarget(f"{target}.img_attn.qkv.weight", rows)
            names[f"{source}.attn.add_{projection}_proj"] = ComfyTarget(f"{target}.txt_attn.qkv.weight", rows)
        for child, bfl in FLUX_DOUBLE_BLOCK_MODULES.items():
            names[f"{source}.{child}"] = ComfyTarget(f"{target}.{bfl}.weight")
    for index in range(single):
        source, target = f"single_transformer_blocks.{index}", f"diffusion_model.single_blocks.{index}"
        for part, projection in enumerate("qkv"):
            names[f"{source}.attn.to_{projection}"] = ComfyTarget(f"{target}.linear1.weight", (part * hidden, hidden))
        # linear1 stacks q, k, v and then the MLP input (4 x hidden rows).
        names[f"{source}.proj_mlp"] = ComfyTarget(f"{target}.linear1.weight", (3 * hidden, 4 * hidden))
        for child, bfl in FLUX_SINGLE_BLOCK_MODULES.items():
            names[f"{source}.{child}"] = ComfyTarget(f"{target}.{bfl}.weight")
    for child, bfl in FLUX_TOP_LEVEL_MODULES.items():
        names[child] = ComfyTarget(f"diffusion_model.{bfl}.weight")
    names["norm_out.linear"] = ComfyTarget(
        "diffusion_model.final_layer.adaLN_modulation.1.weight", swap_scale_shift=True
    )
    return names


def comfyui_flux_key_map(transformer_config: Mapping[str, Any]) -> dict[str, ComfyTarget]:
    """`lora_transformer_<diffusers name with _>` -> the ComfyUI weight it lands on."""
    return {
        FLUX_PREFIX + diffusers.replace(".", "_"): target
        for diffusers, target in comfyui_flux_diffusers_to_bfl(transformer_config).items()
    }


def comfyui_flux_lora_names(transformer_config: dict) -> set[str]:
    """The `lora_transformer_…` module names ComfyUI maps for a diffusers `FluxTransformer2DModel` config."""
    return set(comfyui_flux_key_map(transformer_config))


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_flux_lora_names(denoiser_config)
