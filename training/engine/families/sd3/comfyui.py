"""The kohya names ComfyUI maps for SD 3 / 3.5.

`comfy/lora.py`, the `comfy.model_base.SD3` branch of `model_lora_keys_unet`, and `comfy/utils.py`,
`mmdit_to_diffusers` (its tables `MMDIT_MAP_BLOCK`, `MMDIT_MAP_BASIC`): the diffusers
`SD3Transformer2DModel` <-> MMDiT (`joint_blocks.N.x_block` / `.context_block`) names under the prefixes
`transformer.`, `base_model.model.`, `lora_transformer_` and `lycoris_`. It reads only `depth` and
`num_blocks` (default `depth`); `comfy/model_detection.py` sets `depth` to the model's width / 64 and no
`num_blocks`, so ComfyUI maps `width / 64` blocks (24 for 3.5 medium, 38 for large: all of them) and
slices q, k, v at `depth * 64` rows. The dual attention (`attn2`) is mapped for every block; the last
block's `norm1_context.linear` has its scale and shift halves swapped (`swap_scale_shift`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.engine.testing.comfyui import FLUX_PREFIX, ComfyTarget

SD3_BLOCK_MODULES: dict[str, str] = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}


SD3_TOP_LEVEL_MODULES: dict[str, str] = {
    "pos_embed.proj": "x_embedder.proj",
    "context_embedder": "context_embedder",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "proj_out": "final_layer.linear",
}


def comfyui_sd3_depth(transformer_config: Mapping[str, Any]) -> int:
    """ComfyUI's `depth` for a diffusers SD3 transformer config: its width / 64."""
    width = int(transformer_config.get("num_attention_heads", 18)) * int(
        transformer_config.get("attention_head_dim", 64)
    )
    return width // 64


def comfyui_sd3_diffusers_to_mmdit(transformer_config: Mapping[str, Any]) -> dict[str, ComfyTarget]:
    """diffusers module name -> the ComfyUI weight (and row slice) it lands on, for the blocks ComfyUI maps."""
    depth = comfyui_sd3_depth(transformer_config)
    hidden = depth * 64
    names: dict[str, ComfyTarget] = {}
    for index in range(depth):
        source, target = f"transformer_blocks.{index}", f"diffusion_model.joint_blocks.{index}"
        for part, projection in enumerate("qkv"):
            rows = (part * hidden, hidden)
            names[f"{source}.attn.to_{projection}"] = ComfyTarget(f"{target}.x_block.attn.qkv.weight", rows)
            names[f"{source}.attn.add_{projection}_proj"] = ComfyTarget(f"{target}.context_block.attn.qkv.weight", rows)
            names[f"{source}.attn2.to_{projection}"] = ComfyTarget(f"{target}.x_block.attn2.qkv.weight", rows)
        for child, mmdit in SD3_BLOCK_MODULES.items():
            names[f"{source}.{child}"] = ComfyTarget(f"{target}.{mmdit}.weight")
    last = f"transformer_blocks.{depth - 1}.norm1_context.linear"
    names[last] = ComfyTarget(names[last].key, swap_scale_shift=True)
    for child, mmdit in SD3_TOP_LEVEL_MODULES.items():
        names[child] = ComfyTarget(f"diffusion_model.{mmdit}.weight")
    names["norm_out.linear"] = ComfyTarget(
        "diffusion_model.final_layer.adaLN_modulation.1.weight", swap_scale_shift=True
    )
    return names


def comfyui_sd3_key_map(transformer_config: Mapping[str, Any]) -> dict[str, ComfyTarget]:
    """`lora_transformer_<diffusers name with _>` (OneTrainer's names, which we write) -> the ComfyUI weight."""
    return {
        FLUX_PREFIX + diffusers.replace(".", "_"): target
        for diffusers, target in comfyui_sd3_diffusers_to_mmdit(transformer_config).items()
    }


def comfyui_sd3_lora_names(transformer_config: dict) -> set[str]:
    return set(comfyui_sd3_key_map(transformer_config))


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_sd3_lora_names(denoiser_config)
