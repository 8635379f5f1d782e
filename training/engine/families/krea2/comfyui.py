"""The kohya names ComfyUI maps for Krea 2. From ComfyUI's sources (upstream commit 2a610155, "Support Krea2"):

- `comfy/lora.py`, the `comfy.model_base.Krea2` branch of `model_lora_keys_unet`: for every weight of
  `comfy.utils.krea2_to_diffusers(unet_config)` it registers the diffusers name under `diffusion_model.`,
  `transformer.`, bare, and as `lycoris_<name with _>`; not `lora_transformer_`.
- `comfy/utils.py`, `krea2_to_diffusers`: a plain renaming (no fused weights, no row slices) of each image
  block's and each text-fusion block's attention (`to_q`, `to_k`, `to_v`, `to_gate`, `to_out.0`, also without
  the `.0`) and SwiGLU (`ff.gate`, `ff.up`, `ff.down`), for `layers` image blocks and the text fusion's 2
  layer-wise and 2 refiner blocks (fixed counts in ComfyUI's model), plus the embedders and the final layer.
"""

from __future__ import annotations

BLOCK_MODULES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_gate",
    "attn.to_out.0",
    "attn.to_out",
    "ff.gate",
    "ff.up",
    "ff.down",
)
TOP_LEVEL_MODULES = (
    "img_in",
    "time_embed.linear_1",
    "time_embed.linear_2",
    "time_mod_proj",
    "txt_in.linear_1",
    "txt_in.linear_2",
    "text_fusion.projector",
    "final_layer.linear",
)
TEXT_FUSION_BLOCKS = 2  # ComfyUI's TextFusionTransformer: 2 layer-wise and 2 refiner blocks, whatever the config


def lora_names(denoiser_config: dict) -> set[str]:
    blocks = [f"transformer_blocks.{index}" for index in range(int(denoiser_config.get("num_layers", 28)))]
    for kind in ("layerwise_blocks", "refiner_blocks"):
        blocks += [f"text_fusion.{kind}.{index}" for index in range(TEXT_FUSION_BLOCKS)]
    names = [f"{block}.{module}" for block in blocks for module in BLOCK_MODULES] + list(TOP_LEVEL_MODULES)
    return {"lycoris_" + name.replace(".", "_") for name in names}
