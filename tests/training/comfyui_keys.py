"""Which kohya-layout LoRA module names ComfyUI maps onto a model: an independent re-statement for tests.

Nothing here is imported from ComfyUI or copied from it. The rules were read in ComfyUI's sources
(github.com/comfyanonymous/ComfyUI, now Comfy-Org/ComfyUI) and written down again so that our tests can
check that every module of an exported `lora_kohya.safetensors` is one ComfyUI understands:

- `comfy/lora.py`, `model_lora_keys_unet`: for a UNet model ComfyUI turns every key of
  `comfy.utils.unet_to_diffusers(unet_config)` that ends in `.weight` into the LoRA name
  `lora_unet_<diffusers key without .weight, dots replaced by _>`; for a `comfy.model_base.Flux` model it
  does the same with `comfy.utils.flux_to_diffusers(unet_config)` and the prefix `lora_transformer_`
  (its comment: "onetrainer"). `load_lora` then reads, for every mapped name, `<name>.alpha`,
  `<name>.dora_scale` and whatever suffixes the weight adapters ask for; any other key of the file is
  logged as "lora key not loaded". `comfy/lora_convert.py`, `convert_lora`, rewrites only a few foreign
  layouts (BFL control, Wan Fun, USO, fused Krea2 to_qkv) that our files never match.
- `comfy/utils.py`, `unet_to_diffusers` and its tables `UNET_MAP_ATTENTIONS`, `TRANSFORMER_BLOCKS`,
  `UNET_MAP_RESNET`, `UNET_MAP_BASIC`: the diffusers <-> ldm (`input_blocks`/`middle_block`/
  `output_blocks`) names, driven by the ComfyUI `unet_config` fields `num_res_blocks`, `channel_mult`,
  `transformer_depth`, `transformer_depth_output` and `transformer_depth_middle`.
- `comfy/utils.py`, `flux_to_diffusers`: the diffusers `FluxTransformer2DModel` <-> BFL (`double_blocks`/
  `single_blocks`) names; q, k, v (and the single blocks' `proj_mlp`) land on row ranges of the fused
  `qkv` / `linear1` weights.
- `comfy/lora.py`, the `comfy.model_base.SD3` branch of `model_lora_keys_unet`, and `comfy/utils.py`,
  `mmdit_to_diffusers` (its tables `MMDIT_MAP_BLOCK`, `MMDIT_MAP_BASIC`): the diffusers
  `SD3Transformer2DModel` <-> MMDiT (`joint_blocks.N.x_block` / `.context_block`) names under the prefixes
  `transformer.`, `base_model.model.`, `lora_transformer_` and `lycoris_`. It reads only `depth` and
  `num_blocks` (default `depth`); `comfy/model_detection.py` sets `depth` to the model's width / 64 and no
  `num_blocks`, so ComfyUI maps `width / 64` blocks (24 for 3.5 medium, 38 for large: all of them) and
  slices q, k, v at `depth * 64` rows. The dual attention (`attn2`) is mapped for every block; the last
  block's `norm1_context.linear` has its scale and shift halves swapped (`swap_scale_shift`).
- `comfy/model_base.py`: `Chroma` subclasses `Flux`, so `model_lora_keys_unet` maps a Chroma model's LoRA
  names with `flux_to_diffusers` and the same `lora_transformer_` prefix; the modulation targets that map
  names (Chroma has none: its `distilled_guidance_layer` computes them) are dropped as absent.
- `comfy/model_base.py`: `Flux2` subclasses `Flux` too, so a FLUX.2 model's LoRA names come from the same
  `flux_to_diffusers` table, which routes FLUX.2's spellings (the single blocks' fused `to_qkv_mlp_proj`
  and `to_out` onto `linear1` and `linear2`, the SwiGLU `ff.linear_in`/`linear_out` onto the MLPs). Its
  shared modulation layers and `time_guidance_embed` are not in the table; our adapters never target them.
- `comfy/lora.py`, the `comfy.model_base.Lumina2` branch (ComfyUI's `ZImage` model is a `Lumina2`), and
  `comfy/utils.py`, `z_image_to_diffusers`: the diffusers `ZImageTransformer2DModel` names are registered
  under `diffusion_model.`, `transformer.`, bare, and `lycoris_<name with _>` (not `lora_transformer_`).
  It reads `n_layers`, `dim` and `n_refiner_layers` (default 2; `model_detection` does not set it); q, k
  and v land on row ranges of the fused `attention.qkv`, `attention.to_out.0` on `attention.out`; the
  other block names are the same on both sides.
- `comfy/lora.py`, the `comfy.model_base.QwenImage` branch: every weight of ComfyUI's Qwen-Image model
  (`comfy/ldm/qwen_image/model.py`, whose module names are diffusers' own) is registered bare, under
  `transformer.` and as `lycoris_<name with _>`; no `lora_transformer_` and no conversion table.
- `comfy/model_detection.py`, `detect_unet_config` and `unet_config_from_diffusers_unet`: how those
  `unet_config` fields follow from a model (a flat per-resnet list of transformer depths, the output one
  ordered from the shallowest level up, because `unet_to_diffusers` pops it from the end), and the
  values ComfyUI publishes for SD 1.5 and SDXL, against which the tests check `comfyui_unet_layout`.
- `comfy/weight_adapter/` (`lora.py`, `loha.py`, `lokr.py`, `glora.py`, `oft.py`, `boft.py`), each
  adapter's `load`: the key suffixes in `ADAPTER_SUFFIXES`.

Like ComfyUI, the maps name a few modules that a given diffusers model may lack (every resnet's
`conv_shortcut`, the last level's downsampler, the last up block's upsampler); a name in the map means
"ComfyUI would route it", not "the model has it". ComfyUI also accepts `lora_unet_<ldm key>` names built
from its own state dict (e.g. `lora_unet_input_blocks_4_1_proj_in`); our exporter never writes those, so
they are left out and a test cannot pass through them by accident.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

UNET_PREFIX = "lora_unet_"
FLUX_PREFIX = "lora_transformer_"


@dataclass(frozen=True)
class ComfyTarget:
    """The ComfyUI weight a LoRA name lands on.

    `rows` is `(start, length)` along dim 0 when only a slice of a fused weight is patched (FLUX's q/k/v
    in `qkv`/`linear1`); `swap_scale_shift` marks FLUX's `norm_out.linear`, whose halves ComfyUI swaps."""

    key: str
    rows: tuple[int, int] | None = None
    swap_scale_shift: bool = False


# --- UNet (SD 1.x / 2.x / SDXL): diffusers module name -> ldm module name, per building block ---------

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


# --- FLUX.1: diffusers FluxTransformer2DModel -> BFL layout ------------------------------------------

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


# --- SD 3 / 3.5: diffusers SD3Transformer2DModel -> MMDiT layout -----------------------------------------

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


# --- Z-Image: diffusers ZImageTransformer2DModel -> ComfyUI's Lumina2/NextDiT layout ----------------------------

ZIMAGE_PREFIX = "lycoris_"
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


def comfyui_same_name_lora_names(class_name: str, transformer_config: Mapping[str, Any]) -> set[str]:
    """`lycoris_<name with _>` for every Linear of a diffusers transformer (built on the meta device) whose
    ComfyUI model has the same module names: Qwen-Image's, and HiDream's (comfy/ldm/hidream/model.py ports
    the same original code as diffusers: `double_stream_blocks.<i>.block.attn1.to_q`,
    `…ff_i.experts.<e>.w1`, `caption_projection.<i>.linear`, `final_layer.linear`). ComfyUI's loader maps
    `lycoris_` plus that name, dots as underscores, for both (comfy/lora.py)."""
    import diffusers
    import torch

    values = {key: value for key, value in transformer_config.items() if not key.startswith("_")}
    with torch.device("meta"):
        model = getattr(diffusers, class_name)(**values)
    return {
        ZIMAGE_PREFIX + name.replace(".", "_")
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def comfyui_lora_names(family: str, denoiser_config: dict) -> set[str]:
    """The kohya module names ComfyUI maps for a model of `family` with this diffusers denoiser config."""
    if family in ("sd15", "sdxl"):
        return comfyui_unet_lora_names(denoiser_config)
    if family in ("flux", "flux-kontext", "chroma", "flux2-klein", "flux2"):  # Chroma and Flux2 subclass Flux
        return comfyui_flux_lora_names(denoiser_config)
    if family == "sd3":
        return comfyui_sd3_lora_names(denoiser_config)
    if family == "zimage":
        return set(comfyui_zimage_key_map(denoiser_config))
    if family == "qwenimage":
        return comfyui_same_name_lora_names("QwenImageTransformer2DModel", denoiser_config)
    if family == "hidream":
        return comfyui_same_name_lora_names("HiDreamImageTransformer2DModel", denoiser_config)
    raise ValueError(f"no ComfyUI key map for the {family} family")


# --- Key suffixes ------------------------------------------------------------------------------------

# Read by comfy/lora.py `load_lora` itself for every mapped name.
LOADER_SUFFIXES: tuple[str, ...] = (
    ".alpha",
    ".dora_scale",
    ".w_norm",
    ".b_norm",
    ".diff",
    ".diff_b",
    ".set_weight",
)
# comfy/weight_adapter/lora.py: (up, down) pairs in the order LoRAAdapter.load tries them, plus extras.
LORA_SUFFIXES: tuple[str, ...] = (
    ".lora_up.weight",
    ".lora_down.weight",
    ".lora_mid.weight",
    "_lora.up.weight",
    "_lora.down.weight",
    ".lora_B.weight",
    ".lora_A.weight",
    ".lora.up.weight",
    ".lora.down.weight",
    ".lora_B",
    ".lora_A",
    ".lora_linear_layer.up.weight",
    ".lora_linear_layer.down.weight",
    ".lora_B.default.weight",
    ".lora_A.default.weight",
    ".reshape_weight",
)
LOHA_SUFFIXES: tuple[str, ...] = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2")
LOKR_SUFFIXES: tuple[str, ...] = (
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_w1_a",
    ".lokr_w1_b",
    ".lokr_w2_a",
    ".lokr_w2_b",
    ".lokr_t2",
)
GLORA_SUFFIXES: tuple[str, ...] = (".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight")
OFT_SUFFIXES: tuple[str, ...] = (".oft_blocks", ".rescale")  # OFT (3-D blocks) and BOFT (4-D blocks)

ADAPTER_SUFFIXES: tuple[str, ...] = (
    LOADER_SUFFIXES + LORA_SUFFIXES + LOHA_SUFFIXES + LOKR_SUFFIXES + GLORA_SUFFIXES + OFT_SUFFIXES
)
# Longest first, so `.lora_A.default.weight` wins over `.lora_A` and `.diff_b` over `.diff`.
_SUFFIXES_LONGEST_FIRST: tuple[str, ...] = tuple(sorted(set(ADAPTER_SUFFIXES), key=len, reverse=True))


def split_adapter_key(key: str) -> tuple[str, str] | None:
    """`(module name, suffix)` for a key ending in a suffix ComfyUI reads, else None."""
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return None


def unmapped_kohya_modules(kohya_keys: Iterable[str], known: set[str]) -> list[str]:
    """The module names of a kohya state dict that ComfyUI would not load, sorted.

    Each key loses the adapter suffix it ends with (`.lora_down.weight`, `.alpha`, `.dora_scale`,
    `.lokr_w1`, `.hada_w1_a`, …: every suffix in `ADAPTER_SUFFIXES`) and the module name is reported when
    it is not in `known`. A key ending in none of those suffixes is reported whole: ComfyUI would log it
    as "lora key not loaded" whatever its module."""
    unmapped: set[str] = set()
    for key in kohya_keys:
        split = split_adapter_key(key)
        if split is None:
            unmapped.add(key)
        elif split[0] not in known:
            unmapped.add(split[0])
    return sorted(unmapped)
