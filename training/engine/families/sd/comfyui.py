"""The kohya names ComfyUI maps for SD 1.x and SDXL UNets (training/engine/testing/comfyui.py says how this
was read). From ComfyUI's sources:

- `comfy/lora.py`, `model_lora_keys_unet`: for a UNet model ComfyUI turns every key of
  `comfy.utils.unet_to_diffusers(unet_config)` that ends in `.weight` into the LoRA name
  `lora_unet_<diffusers key without .weight, dots replaced by _>`.
- `comfy/utils.py`, `unet_to_diffusers` and its tables `UNET_MAP_ATTENTIONS`, `TRANSFORMER_BLOCKS`,
  `UNET_MAP_RESNET`, `UNET_MAP_BASIC`: the diffusers <-> ldm (`input_blocks`/`middle_block`/
  `output_blocks`) names, driven by the ComfyUI `unet_config` fields `num_res_blocks`, `channel_mult`,
  `transformer_depth`, `transformer_depth_output` and `transformer_depth_middle`.
- `comfy/model_detection.py`, `detect_unet_config` and `unet_config_from_diffusers_unet`: how those
  `unet_config` fields follow from a model (a flat per-resnet list of transformer depths, the output one
  ordered from the shallowest level up, because `unet_to_diffusers` pops it from the end), and the
  values ComfyUI publishes for SD 1.5 and SDXL, against which the tests check `comfyui_unet_layout`.

ComfyUI also accepts `lora_unet_<ldm key>` names built from its own state dict (e.g.
`lora_unet_input_blocks_4_1_proj_in`); our exporter never writes those, so they are left out and a test
cannot pass through them by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.engine.testing.comfyui import UNET_PREFIX, ComfyTarget

# A resnet: diffusers `ResnetBlock2D` child -> ldm `ResBlock` child.
UNET_RESNET_MODULES: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


# A `Transformer2DModel` (ldm `SpatialTransformer`): the same child names on both sides.
UNET_SPATIAL_TRANSFORMER_MODULES: tuple[str, ...] = ("norm", "proj_in", "proj_out")


# One `BasicTransformerBlock`: the same child names on both sides.
UNET_TRANSFORMER_BLOCK_MODULES: tuple[str, ...] = (
    "norm1",
    "norm2",
    "norm3",
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
)


# Outside the blocks. `class_embedding` and `add_embedding` (SDXL) both feed ldm's `label_emb`.
UNET_TOP_LEVEL_MODULES: dict[str, str] = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _per_level(value: Any, levels: int) -> list[Any]:
    if isinstance(value, int):
        return [value] * levels
    values = list(value)
    if len(values) != levels:
        raise ValueError(f"expected {levels} per-level values, got {values!r}")
    return values


def _depth_at(entry: Any, layer: int) -> int:
    """A diffusers `transformer_layers_per_block` entry is one int per block or one int per layer."""
    return int(entry) if isinstance(entry, int) else int(list(entry)[layer])


def comfyui_unet_layout(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ComfyUI `unet_config` layout fields for a diffusers `UNet2DConditionModel` config.

    These are what `detect_unet_config` reads off the equivalent ldm checkpoint: `num_res_blocks` and
    `channel_mult` per level, `transformer_depth` per down resnet (0 where the level has no attention),
    `transformer_depth_output` per up resnet with the shallowest level first, and
    `transformer_depth_middle` (the mid transformer's depth, -1 for a mid block without one, -2 for none).
    A config that already has `num_res_blocks` is taken to be in ComfyUI's layout and returned as is."""
    if "num_res_blocks" in unet_config:
        return {
            "num_res_blocks": list(unet_config["num_res_blocks"]),
            "channel_mult": list(unet_config["channel_mult"]),
            "transformer_depth": list(unet_config["transformer_depth"]),
            "transformer_depth_output": list(unet_config["transformer_depth_output"]),
            "transformer_depth_middle": unet_config.get("transformer_depth_middle"),
        }
    channels = list(unet_config["block_out_channels"])
    levels = len(channels)
    down_types = list(unet_config["down_block_types"])
    up_types = list(unet_config["up_block_types"])
    layers = [int(n) for n in _per_level(unet_config.get("layers_per_block", 2), levels)]
    per_block = _per_level(unet_config.get("transformer_layers_per_block", 1), levels)
    # diffusers' up blocks run deepest first and, unless told otherwise, reuse the down depths reversed.
    reverse = unet_config.get("reverse_transformer_layers_per_block")
    up_depths = list(reverse) if reverse is not None else list(reversed(per_block))

    transformer_depth: list[int] = []
    for level in range(levels):
        cross = "CrossAttn" in down_types[level]
        transformer_depth += [_depth_at(per_block[level], i) if cross else 0 for i in range(layers[level])]

    # Up block `x` serves level `levels - 1 - x`; ComfyUI lists the output depths from level 0 upwards.
    output_by_level: list[list[int]] = [[] for _ in range(levels)]
    for x in range(levels):
        level = levels - 1 - x
        cross = "CrossAttn" in up_types[x]
        output_by_level[level] = [_depth_at(up_depths[x], i) if cross else 0 for i in range(layers[level] + 1)]
    transformer_depth_output = [depth for level in output_by_level for depth in reversed(level)]

    mid_type = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type is None:
        middle = -2
    elif "CrossAttn" in mid_type:
        middle = _depth_at(per_block[-1], 0)
    else:
        middle = -1

    return {
        "num_res_blocks": layers,
        "channel_mult": [c // channels[0] for c in channels],
        "transformer_depth": transformer_depth,
        "transformer_depth_output": transformer_depth_output,
        "transformer_depth_middle": middle,
    }


def comfyui_unet_diffusers_to_ldm(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers module name -> ldm module name (both without `.weight`), as ComfyUI routes them."""
    layout = comfyui_unet_layout(unet_config)
    res_blocks: list[int] = layout["num_res_blocks"]
    down_depths = iter(layout["transformer_depth"])
    up_depths = list(layout["transformer_depth_output"])
    middle = layout["transformer_depth_middle"] or 0
    names: dict[str, str] = {}

    def resnet(diffusers: str, ldm: str) -> None:
        for child, ldm_child in UNET_RESNET_MODULES.items():
            names[f"{diffusers}.{child}"] = f"{ldm}.{ldm_child}"

    def spatial_transformer(diffusers: str, ldm: str, depth: int) -> None:
        for child in UNET_SPATIAL_TRANSFORMER_MODULES:
            names[f"{diffusers}.{child}"] = f"{ldm}.{child}"
        for block in range(depth):
            for child in UNET_TRANSFORMER_BLOCK_MODULES:
                names[f"{diffusers}.transformer_blocks.{block}.{child}"] = f"{ldm}.transformer_blocks.{block}.{child}"

    for level, count in enumerate(res_blocks):
        # ldm input block 0 is conv_in; then each level holds `count` resnet(+attention) blocks and a
        # downsampler block. ComfyUI indexes with this level's own count, exact for uniform counts.
        block = 1 + (count + 1) * level
        for i in range(count):
            resnet(f"down_blocks.{level}.resnets.{i}", f"input_blocks.{block}.0")
            depth = next(down_depths)
            if depth > 0:
                spatial_transformer(f"down_blocks.{level}.attentions.{i}", f"input_blocks.{block}.1", depth)
            block += 1
        names[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"

    # The mid block's spatial transformer is routed even when its depth says it has none.
    spatial_transformer("mid_block.attentions.0", "middle_block.1", max(middle, 0))
    resnet("mid_block.resnets.0", "middle_block.0")
    resnet("mid_block.resnets.1", "middle_block.2")

    for x, count in enumerate(reversed(res_blocks)):
        block = (count + 1) * x
        for i in range(count + 1):
            resnet(f"up_blocks.{x}.resnets.{i}", f"output_blocks.{block}.0")
            depth = up_depths.pop()
            slot = 1
            if depth > 0:
                spatial_transformer(f"up_blocks.{x}.attentions.{i}", f"output_blocks.{block}.1", depth)
                slot = 2
            if i == count:
                names[f"up_blocks.{x}.upsamplers.0.conv"] = f"output_blocks.{block}.{slot}.conv"
            block += 1

    names.update(UNET_TOP_LEVEL_MODULES)
    return names


def comfyui_unet_key_map(unet_config: Mapping[str, Any]) -> dict[str, ComfyTarget]:
    """`lora_unet_<diffusers name with _>` -> the `diffusion_model.…weight` key ComfyUI patches."""
    return {
        UNET_PREFIX + diffusers.replace(".", "_"): ComfyTarget(f"diffusion_model.{ldm}.weight")
        for diffusers, ldm in comfyui_unet_diffusers_to_ldm(unet_config).items()
    }


def comfyui_unet_lora_names(unet_config: dict) -> set[str]:
    """The `lora_unet_…` module names ComfyUI maps for a diffusers `UNet2DConditionModel` config."""
    return set(comfyui_unet_key_map(unet_config))


def lora_names(denoiser_config: dict) -> set[str]:
    return comfyui_unet_lora_names(denoiser_config)
