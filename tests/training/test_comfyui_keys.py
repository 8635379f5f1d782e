"""Checks of the ComfyUI key maps (training/engine/testing/comfyui.py and each family folder's comfyui.py) against facts: published model configs, the real diffusers
module trees (built on the meta device, so no memory and no download) and correspondences read in
ComfyUI's comfy/utils.py tables and comfy/model_detection.py."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from bench import gpu
from training.engine.export import to_kohya
from training.engine.families.flux.comfyui import (
    comfyui_flux_diffusers_to_bfl,
    comfyui_flux_key_map,
    comfyui_flux_lora_names,
)
from training.engine.families.sd.comfyui import (
    comfyui_unet_diffusers_to_ldm,
    comfyui_unet_key_map,
    comfyui_unet_layout,
    comfyui_unet_lora_names,
)
from training.engine.families.sd3.comfyui import (
    comfyui_sd3_depth,
    comfyui_sd3_diffusers_to_mmdit,
    comfyui_sd3_key_map,
    comfyui_sd3_lora_names,
)
from training.engine.families.zimage.comfyui import comfyui_zimage_diffusers_to_comfy, comfyui_zimage_key_map
from training.engine.testing.comfyui import (
    ADAPTER_SUFFIXES,
    ComfyTarget,
    comfyui_lora_names,
    split_adapter_key,
    unmapped_kohya_modules,
)

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass

# Published diffusers configs (the fields that shape the module tree).
SD15_UNET = {  # stable-diffusion-v1-5 unet/config.json
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SDXL_UNET = {  # stable-diffusion-xl-base-1.0 unet/config.json
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
FLUX_DEV_TRANSFORMER = {  # FLUX.1-dev transformer/config.json
    "attention_head_dim": 128,
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}
# The tiny test models of the families' tiny.py (a test below checks these equal the built ones).
TINY_SD15_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 4,
}
TINY_SDXL_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
    "cross_attention_dim": 64,
    "norm_num_groups": 1,
}
TINY_FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 4,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),
}
UNET_CONFIGS = {"sd15": SD15_UNET, "sdxl": SDXL_UNET, "tiny-sd15": TINY_SD15_UNET, "tiny-sdxl": TINY_SDXL_UNET}
FLUX_CONFIGS = {"flux-dev": FLUX_DEV_TRANSFORMER, "tiny-flux": TINY_FLUX_TRANSFORMER}

# The leaves a LoRA may target: attention blocks and resnets of a UNet, every Linear of FLUX's blocks.
UNET_ATTENTION_LEAVES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
UNET_RESNET_LEAVES = ("conv1", "conv2", "time_emb_proj", "conv_shortcut")
FLUX_BLOCK_LEAVES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "norm1.linear",
    "norm1_context.linear",
    "norm.linear",
    "proj_mlp",
    "proj_out",
)


def build_unet(config: dict) -> nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def build_flux(config: dict) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**config)


def layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear | nn.Conv2d)]


def exported_keys(component: str, module_names: list[str]) -> list[str]:
    """The keys our exporter writes for a LoRA on `module_names` (shapes do not matter to the names)."""
    tensor = torch.zeros(1)
    state = {}
    for name in module_names:
        state[f"{component}.{name}.lora_A.weight"] = tensor
        state[f"{component}.{name}.lora_B.weight"] = tensor
    return list(to_kohya(state, alpha=4.0))


# --- The derived ComfyUI layout equals what ComfyUI publishes -------------------------------------------


def test_sd15_layout_is_comfyuis():
    # comfy/model_detection.py, unet_config_from_diffusers_unet: the SD15 entry.
    assert comfyui_unet_layout(SD15_UNET) == {
        "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "transformer_depth_middle": 1,
    }


def test_sdxl_layout_is_comfyuis():
    # comfy/model_detection.py, unet_config_from_diffusers_unet: the SDXL entry.
    assert comfyui_unet_layout(SDXL_UNET) == {
        "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "transformer_depth_middle": 10,
    }


def test_tiny_sdxl_layout():
    assert comfyui_unet_layout(TINY_SDXL_UNET) == {
        "num_res_blocks": [2, 2],
        "channel_mult": [1, 2],
        "transformer_depth": [1, 1, 2, 2],
        "transformer_depth_output": [1, 1, 1, 2, 2, 2],
        "transformer_depth_middle": 2,
    }


@pytest.mark.parametrize(("family", "config"), [("sd15", TINY_SD15_UNET), ("sdxl", TINY_SDXL_UNET)])
def test_the_restated_tiny_configs_are_the_built_ones(family: str, config: dict, tiny_models: dict) -> None:
    built = json.loads((tiny_models[family] / "unet" / "config.json").read_text(encoding="utf-8"))
    for key, value in config.items():
        assert built[key] == (list(value) if isinstance(value, tuple) else value), key


def test_the_restated_tiny_flux_config_is_the_built_one(tiny_models: dict) -> None:
    built = json.loads((tiny_models["flux"] / "transformer" / "config.json").read_text(encoding="utf-8"))
    for key, value in TINY_FLUX_TRANSFORMER.items():
        assert built[key] == (list(value) if isinstance(value, tuple) else value), key


def test_a_comfyui_layout_config_gives_the_same_names():
    comfy_sdxl = {
        "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "transformer_depth_middle": 10,
    }
    assert comfyui_unet_key_map(comfy_sdxl) == comfyui_unet_key_map(SDXL_UNET)


# --- Every layer of the real module trees maps ------------------------------------------------------------


@pytest.mark.parametrize("family", list(UNET_CONFIGS))
def test_every_unet_layer_is_mapped(family: str):
    unet = build_unet(UNET_CONFIGS[family])
    names = layers(unet)
    # The collection really holds the attention and resnet leaves a LoRA targets.
    for leaf in UNET_ATTENTION_LEAVES + UNET_RESNET_LEAVES:
        assert any(name.endswith("." + leaf) for name in names), leaf
    known = comfyui_unet_lora_names(dict(unet.config))
    assert unmapped_kohya_modules(exported_keys("unet", names), known) == []
    # The plain published dict (without diffusers' defaults filled in) gives the same names.
    assert comfyui_unet_lora_names(UNET_CONFIGS[family]) == known


# What ComfyUI's map names beyond a model's modules, by construction of unet_to_diffusers.
UNET_ROUTED_BUT_ABSENT = re.compile(
    r"^(.*\.conv_shortcut"
    r"|down_blocks\.\d+\.downsamplers\.0\.conv"
    r"|up_blocks\.\d+\.upsamplers\.0\.conv"
    r"|(class|add)_embedding\.linear_[12])$"
)


@pytest.mark.parametrize("family", list(UNET_CONFIGS))
def test_unet_map_has_no_phantom_blocks(family: str):
    """A wrong depth or block type would route attention names the model does not have."""
    unet = build_unet(UNET_CONFIGS[family])
    modules = {name for name, _ in unet.named_modules()}
    absent = [name for name in comfyui_unet_diffusers_to_ldm(dict(unet.config)) if name not in modules]
    assert [name for name in absent if not UNET_ROUTED_BUT_ABSENT.match(name)] == []


@pytest.mark.parametrize("family", list(FLUX_CONFIGS))
def test_every_flux_linear_is_mapped(family: str):
    transformer = build_flux(FLUX_CONFIGS[family])
    names = layers(transformer)
    blocks = [n for n in names if n.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    for leaf in FLUX_BLOCK_LEAVES:
        assert any(name.endswith("." + leaf) for name in blocks), leaf
    known = comfyui_flux_lora_names(dict(transformer.config))
    assert unmapped_kohya_modules(exported_keys("transformer", names), known) == []
    assert all(key.startswith("lora_transformer_") for key in exported_keys("transformer", names))
    assert comfyui_flux_lora_names(FLUX_CONFIGS[family]) == known


# Aliases ComfyUI routes for other tools or FLUX.2, absent from a FLUX.1 diffusers model.
FLUX_ROUTED_BUT_ABSENT = re.compile(
    r"^(.*\.ff(_context)?\.linear_(in|out)"
    r"|single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)"
    r"|controlnet_x_embedder)$"
)


@pytest.mark.parametrize("family", list(FLUX_CONFIGS))
def test_flux_map_has_no_phantom_blocks(family: str):
    transformer = build_flux(FLUX_CONFIGS[family])
    modules = {name for name, _ in transformer.named_modules()}
    absent = [name for name in comfyui_flux_diffusers_to_bfl(dict(transformer.config)) if name not in modules]
    assert [name for name in absent if not FLUX_ROUTED_BUT_ABSENT.match(name)] == []


def test_flux_dev_has_its_published_block_counts():
    known = comfyui_flux_lora_names(FLUX_DEV_TRANSFORMER)
    assert "lora_transformer_transformer_blocks_18_attn_to_q" in known
    assert "lora_transformer_transformer_blocks_19_attn_to_q" not in known
    assert "lora_transformer_single_transformer_blocks_37_proj_mlp" in known
    assert "lora_transformer_single_transformer_blocks_38_proj_mlp" not in known


# --- Correspondences read in ComfyUI's tables ----------------------------------------------------------------


def ldm(key: str) -> ComfyTarget:
    return ComfyTarget(f"diffusion_model.{key}.weight")


@pytest.mark.parametrize(
    ("lora_name", "target"),
    [
        # input_blocks.0 is conv_in; level 1 starts at input_blocks.4 (n = 1 + 3 * level).
        ("lora_unet_conv_in", ldm("input_blocks.0.0")),
        ("lora_unet_down_blocks_0_attentions_1_proj_in", ldm("input_blocks.2.1.proj_in")),
        (
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ldm("input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
        ),
        (
            "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_out_0",
            ldm("input_blocks.5.1.transformer_blocks.0.attn2.to_out.0"),
        ),
        ("lora_unet_down_blocks_0_downsamplers_0_conv", ldm("input_blocks.3.0.op")),
        ("lora_unet_down_blocks_0_resnets_0_conv1", ldm("input_blocks.1.0.in_layers.2")),
        ("lora_unet_down_blocks_1_resnets_0_time_emb_proj", ldm("input_blocks.4.0.emb_layers.1")),
        ("lora_unet_down_blocks_1_resnets_0_conv2", ldm("input_blocks.4.0.out_layers.3")),
        ("lora_unet_down_blocks_1_resnets_0_conv_shortcut", ldm("input_blocks.4.0.skip_connection")),
        ("lora_unet_down_blocks_3_resnets_1_conv1", ldm("input_blocks.11.0.in_layers.2")),
        ("lora_unet_mid_block_attentions_0_proj_out", ldm("middle_block.1.proj_out")),
        ("lora_unet_mid_block_resnets_1_conv2", ldm("middle_block.2.out_layers.3")),
        # up_blocks.0 (no attention in SD 1.5) is output_blocks 0-2; its upsampler sits in slot 1.
        ("lora_unet_up_blocks_0_resnets_2_conv1", ldm("output_blocks.2.0.in_layers.2")),
        ("lora_unet_up_blocks_0_upsamplers_0_conv", ldm("output_blocks.2.1.conv")),
        # With attention, the upsampler moves to slot 2.
        ("lora_unet_up_blocks_1_upsamplers_0_conv", ldm("output_blocks.5.2.conv")),
        ("lora_unet_up_blocks_1_attentions_2_proj_in", ldm("output_blocks.5.1.proj_in")),
        (
            "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
            ldm("output_blocks.11.1.transformer_blocks.0.ff.net.0.proj"),
        ),
        ("lora_unet_time_embedding_linear_2", ldm("time_embed.2")),
        ("lora_unet_conv_out", ldm("out.2")),
    ],
)
def test_sd15_correspondences(lora_name: str, target: ComfyTarget):
    assert comfyui_unet_key_map(SD15_UNET)[lora_name] == target


@pytest.mark.parametrize(
    ("lora_name", "target"),
    [
        ("lora_unet_down_blocks_1_attentions_0_proj_in", ldm("input_blocks.4.1.proj_in")),
        (
            "lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn1_to_k",
            ldm("input_blocks.8.1.transformer_blocks.9.attn1.to_k"),
        ),
        (
            "lora_unet_mid_block_attentions_0_transformer_blocks_9_ff_net_2",
            ldm("middle_block.1.transformer_blocks.9.ff.net.2"),
        ),
        (
            "lora_unet_up_blocks_0_attentions_0_transformer_blocks_9_attn2_to_v",
            ldm("output_blocks.0.1.transformer_blocks.9.attn2.to_v"),
        ),
        (
            "lora_unet_up_blocks_1_attentions_2_transformer_blocks_1_attn1_to_out_0",
            ldm("output_blocks.5.1.transformer_blocks.1.attn1.to_out.0"),
        ),
        ("lora_unet_up_blocks_1_upsamplers_0_conv", ldm("output_blocks.5.2.conv")),
        ("lora_unet_add_embedding_linear_1", ldm("label_emb.0.0")),
    ],
)
def test_sdxl_correspondences(lora_name: str, target: ComfyTarget):
    assert comfyui_unet_key_map(SDXL_UNET)[lora_name] == target


def test_sdxl_depths_bound_the_names():
    known = comfyui_unet_lora_names(SDXL_UNET)
    # Level 0 is DownBlock2D: no attention at all; level 1 has 2 transformer blocks, level 2 has 10.
    assert not any(name.startswith("lora_unet_down_blocks_0_attentions") for name in known)
    assert "lora_unet_down_blocks_1_attentions_1_transformer_blocks_1_attn1_to_q" in known
    assert "lora_unet_down_blocks_1_attentions_1_transformer_blocks_2_attn1_to_q" not in known
    assert "lora_unet_up_blocks_2_attentions_0_proj_in" not in known  # UpBlock2D


@pytest.mark.parametrize(
    ("lora_name", "target"),
    [
        (
            "lora_transformer_transformer_blocks_0_attn_to_q",
            ComfyTarget("diffusion_model.double_blocks.0.img_attn.qkv.weight", (0, 3072)),
        ),
        (
            "lora_transformer_transformer_blocks_3_attn_add_k_proj",
            ComfyTarget("diffusion_model.double_blocks.3.txt_attn.qkv.weight", (3072, 3072)),
        ),
        (
            "lora_transformer_transformer_blocks_18_attn_to_v",
            ComfyTarget("diffusion_model.double_blocks.18.img_attn.qkv.weight", (6144, 3072)),
        ),
        ("lora_transformer_transformer_blocks_0_attn_to_out_0", ldm("double_blocks.0.img_attn.proj")),
        ("lora_transformer_transformer_blocks_0_attn_to_add_out", ldm("double_blocks.0.txt_attn.proj")),
        ("lora_transformer_transformer_blocks_0_norm1_linear", ldm("double_blocks.0.img_mod.lin")),
        ("lora_transformer_transformer_blocks_0_norm1_context_linear", ldm("double_blocks.0.txt_mod.lin")),
        ("lora_transformer_transformer_blocks_0_ff_net_0_proj", ldm("double_blocks.0.img_mlp.0")),
        ("lora_transformer_transformer_blocks_0_ff_context_net_2", ldm("double_blocks.0.txt_mlp.2")),
        (
            "lora_transformer_single_transformer_blocks_0_attn_to_k",
            ComfyTarget("diffusion_model.single_blocks.0.linear1.weight", (3072, 3072)),
        ),
        (
            "lora_transformer_single_transformer_blocks_37_proj_mlp",
            ComfyTarget("diffusion_model.single_blocks.37.linear1.weight", (9216, 12288)),
        ),
        ("lora_transformer_single_transformer_blocks_0_proj_out", ldm("single_blocks.0.linear2")),
        ("lora_transformer_single_transformer_blocks_0_norm_linear", ldm("single_blocks.0.modulation.lin")),
        ("lora_transformer_x_embedder", ldm("img_in")),
        ("lora_transformer_proj_out", ldm("final_layer.linear")),
        (
            "lora_transformer_norm_out_linear",
            ComfyTarget("diffusion_model.final_layer.adaLN_modulation.1.weight", swap_scale_shift=True),
        ),
    ],
)
def test_flux_dev_correspondences(lora_name: str, target: ComfyTarget):
    assert comfyui_flux_key_map(FLUX_DEV_TRANSFORMER)[lora_name] == target


# --- Key parsing and the negative cases --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ADAPTER_SUFFIXES)
def test_every_adapter_suffix_is_stripped(suffix: str):
    known = comfyui_unet_lora_names(TINY_SD15_UNET)
    name = "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert split_adapter_key(name + suffix) == (name, suffix)
    assert unmapped_kohya_modules([name + suffix], known) == []


def test_longest_suffix_wins():
    assert split_adapter_key("m.lora_A.default.weight") == ("m", ".lora_A.default.weight")
    assert split_adapter_key("m.diff_b") == ("m", ".diff_b")
    assert split_adapter_key("m.lokr_w1_b") == ("m", ".lokr_w1_b")


def test_a_made_up_module_is_reported():
    known = comfyui_unet_lora_names(SD15_UNET)
    good = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    made_up = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn3_to_q"
    keys = [f"{good}.lora_down.weight", f"{good}.lora_up.weight", f"{good}.alpha"]
    keys += [f"{made_up}.lora_down.weight", f"{made_up}.lora_up.weight", f"{made_up}.alpha", f"{made_up}.dora_scale"]
    assert unmapped_kohya_modules(keys, known) == [made_up]


@pytest.mark.parametrize(
    "key",
    [
        # One block too deep for SD 1.5, a DownBlock2D level with attention, the wrong prefix.
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn1_to_q.lora_down.weight",
        "lora_unet_down_blocks_3_attentions_0_proj_in.lora_down.weight",
        "lora_transformer_down_blocks_0_resnets_0_conv1.lora_down.weight",
        # A diffusers/PEFT-layout name is not a kohya name.
        "unet.down_blocks.0.resnets.0.conv1.lora_A.weight",
    ],
)
def test_names_comfyui_does_not_route_are_reported(key: str):
    assert unmapped_kohya_modules([key], comfyui_unet_lora_names(SD15_UNET)) == [key.partition(".lora_")[0]]


def test_a_key_without_an_adapter_suffix_is_reported_whole():
    name = "lora_unet_conv_in"
    assert unmapped_kohya_modules([f"{name}.lora_down.bias"], comfyui_unet_lora_names(SD15_UNET)) == [
        f"{name}.lora_down.bias"
    ]


# --- SD 3.5: diffusers SD3Transformer2DModel -> MMDiT --------------------------------------------------------

SD35_LARGE_TRANSFORMER = {  # stable-diffusion-3.5-large transformer/config.json
    "attention_head_dim": 64,
    "caption_projection_dim": 2432,
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 38,
    "num_layers": 38,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}
SD35_MEDIUM_TRANSFORMER = {  # stable-diffusion-3.5-medium transformer/config.json
    "attention_head_dim": 64,
    "caption_projection_dim": 1536,
    "dual_attention_layers": list(range(13)),
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 24,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}
TINY_SD3_TRANSFORMER = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "caption_projection_dim": 128,
    "pooled_projection_dim": 64,
    "pos_embed_max_size": 64,
    "dual_attention_layers": (0,),
    "qk_norm": "rms_norm",
}
SD3_CONFIGS = {
    "sd35-large": SD35_LARGE_TRANSFORMER,
    "sd35-medium": SD35_MEDIUM_TRANSFORMER,
    "tiny-sd3": TINY_SD3_TRANSFORMER,
}
# Modules ComfyUI routes that a given model lacks: the dual attention of blocks without it, and the last
# block's context output and MLP (diffusers' `context_pre_only` block has none; ComfyUI drops those patches).
SD3_ROUTED_BUT_ABSENT = re.compile(
    r"^transformer_blocks\.\d+\.(attn2\.(to_[qkv]|to_out\.0|norm_[qk])"
    r"|attn\.to_add_out|ff_context\.net\.(0\.proj|2))$"
)


def build_sd3(config: dict) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        return SD3Transformer2DModel(**config)


@pytest.mark.parametrize("family", list(SD3_CONFIGS))
def test_every_sd3_linear_is_mapped(family: str):
    transformer = build_sd3(SD3_CONFIGS[family])
    names = layers(transformer)
    # ComfyUI reads the number of blocks off the width; the published models (and the tiny one) agree.
    assert comfyui_sd3_depth(dict(transformer.config)) == transformer.config.num_layers
    blocks = [name for name in names if name.startswith("transformer_blocks.")]
    leaves = ("attn.to_q", "attn.add_k_proj", "attn.to_add_out", "ff_context.net.2", "norm1_context.linear")
    for leaf in leaves + (("attn2.to_q",) if transformer.config.dual_attention_layers else ()):
        assert any(name.endswith("." + leaf) for name in blocks), leaf
    known = comfyui_sd3_lora_names(dict(transformer.config))
    assert unmapped_kohya_modules(exported_keys("transformer", names), known) == []
    assert comfyui_sd3_lora_names(SD3_CONFIGS[family]) == known


@pytest.mark.parametrize("family", list(SD3_CONFIGS))
def test_sd3_map_has_no_phantom_blocks(family: str):
    transformer = build_sd3(SD3_CONFIGS[family])
    modules = {name for name, _ in transformer.named_modules()}
    absent = [name for name in comfyui_sd3_diffusers_to_mmdit(dict(transformer.config)) if name not in modules]
    assert [name for name in absent if not SD3_ROUTED_BUT_ABSENT.match(name)] == []


def test_the_restated_tiny_sd3_config_is_the_built_one(tiny_models: dict) -> None:
    built = json.loads((tiny_models["sd3"] / "transformer" / "config.json").read_text(encoding="utf-8"))
    for key, value in TINY_SD3_TRANSFORMER.items():
        assert built[key] == (list(value) if isinstance(value, tuple) else value), key


@pytest.mark.parametrize(
    ("lora_name", "target"),
    [
        (
            "lora_transformer_transformer_blocks_0_attn_to_q",
            ComfyTarget("diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", (0, 2432)),
        ),
        (
            "lora_transformer_transformer_blocks_5_attn_add_v_proj",
            ComfyTarget("diffusion_model.joint_blocks.5.context_block.attn.qkv.weight", (4864, 2432)),
        ),
        ("lora_transformer_transformer_blocks_0_attn_to_out_0", ldm("joint_blocks.0.x_block.attn.proj")),
        ("lora_transformer_transformer_blocks_0_attn_to_add_out", ldm("joint_blocks.0.context_block.attn.proj")),
        ("lora_transformer_transformer_blocks_0_norm1_linear", ldm("joint_blocks.0.x_block.adaLN_modulation.1")),
        ("lora_transformer_transformer_blocks_3_ff_net_0_proj", ldm("joint_blocks.3.x_block.mlp.fc1")),
        ("lora_transformer_transformer_blocks_3_ff_context_net_2", ldm("joint_blocks.3.context_block.mlp.fc2")),
        (
            "lora_transformer_transformer_blocks_36_norm1_context_linear",
            ldm("joint_blocks.36.context_block.adaLN_modulation.1"),
        ),
        (
            "lora_transformer_transformer_blocks_37_norm1_context_linear",
            ComfyTarget(
                "diffusion_model.joint_blocks.37.context_block.adaLN_modulation.1.weight", swap_scale_shift=True
            ),
        ),
        ("lora_transformer_pos_embed_proj", ldm("x_embedder.proj")),
        ("lora_transformer_time_text_embed_text_embedder_linear_1", ldm("y_embedder.mlp.0")),
        (
            "lora_transformer_norm_out_linear",
            ComfyTarget("diffusion_model.final_layer.adaLN_modulation.1.weight", swap_scale_shift=True),
        ),
    ],
)
def test_sd35_large_correspondences(lora_name: str, target: ComfyTarget):
    assert comfyui_sd3_key_map(SD35_LARGE_TRANSFORMER)[lora_name] == target


def test_sd35_medium_dual_attention_lands_on_attn2():
    known = comfyui_sd3_key_map(SD35_MEDIUM_TRANSFORMER)
    assert known["lora_transformer_transformer_blocks_12_attn2_to_k"] == ComfyTarget(
        "diffusion_model.joint_blocks.12.x_block.attn2.qkv.weight", (1536, 1536)
    )
    assert "lora_transformer_transformer_blocks_23_attn_to_q" in known
    assert "lora_transformer_transformer_blocks_24_attn_to_q" not in known


# --- Chroma: mapped as a FLUX model ---------------------------------------------------------------------------

CHROMA_HD_TRANSFORMER = {  # Chroma1-HD transformer/config.json (ChromaTransformer2DModel's defaults)
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "approximator_num_channels": 64,
    "approximator_hidden_dim": 5120,
    "approximator_layers": 5,
}


@pytest.mark.parametrize("config", [CHROMA_HD_TRANSFORMER, "tiny"], ids=["chroma-hd", "tiny-chroma"])
def test_every_chroma_block_linear_is_mapped(config: dict | str, tiny_models: dict) -> None:
    from diffusers import ChromaTransformer2DModel

    if config == "tiny":
        config = json.loads((tiny_models["chroma"] / "transformer" / "config.json").read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    values = {key: value for key, value in config.items() if not key.startswith("_")}
    with torch.device("meta"):
        transformer = ChromaTransformer2DModel(**values)
    names = layers(transformer)
    blocks = [name for name in names if name.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    # No modulation linears inside Chroma's blocks: its approximator computes them, outside the blocks.
    assert not [name for name in blocks if "norm" in name]
    assert any(name.endswith("single_transformer_blocks.0.proj_mlp") for name in blocks)
    known = comfyui_lora_names("chroma", dict(transformer.config))
    assert unmapped_kohya_modules(exported_keys("transformer", blocks), known) == []


# --- Z-Image: lycoris_ names through ComfyUI's Lumina2 branch ---------------------------------------------------

ZIMAGE_TRANSFORMER = {  # Z-Image-Turbo transformer/config.json (ZImageTransformer2DModel's defaults)
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "cap_feat_dim": 2560,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1024, 512, 512],
}


def zimage_config(name: str, tiny_models: dict) -> dict:
    if name == "tiny":
        built = json.loads((tiny_models["zimage"] / "transformer" / "config.json").read_text(encoding="utf-8"))
        return {key: value for key, value in built.items() if not key.startswith("_")}
    return ZIMAGE_TRANSFORMER


@pytest.mark.parametrize("name", ["z-image", "tiny"])
def test_every_zimage_block_linear_is_mapped(name: str, tiny_models: dict) -> None:
    from diffusers import ZImageTransformer2DModel

    config = zimage_config(name, tiny_models)
    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(**config)
    names = layers(transformer)
    blocks = [name for name in names if name.startswith(("layers.", "noise_refiner.", "context_refiner."))]
    for leaf in ("attention.to_q", "attention.to_out.0", "feed_forward.w2", "adaLN_modulation.0"):
        assert any(block.endswith("." + leaf) for block in blocks), leaf
    exported = list(to_kohya({f"transformer.{n}.lora_A.weight": torch.zeros(1) for n in blocks}
                             | {f"transformer.{n}.lora_B.weight": torch.zeros(1) for n in blocks},
                             alpha=4.0, denoiser_prefix="lycoris_"))  # fmt: skip
    assert all(key.startswith("lycoris_") for key in exported)
    assert unmapped_kohya_modules(exported, comfyui_lora_names("zimage", config)) == []
    # The same modules under the prefix the other transformer families use would not load in ComfyUI.
    assert unmapped_kohya_modules(exported_keys("transformer", blocks[:1]), comfyui_lora_names("zimage", config))


def test_zimage_map_has_no_phantom_blocks() -> None:
    from diffusers import ZImageTransformer2DModel

    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(**ZIMAGE_TRANSFORMER)
    modules = {name for name, _ in transformer.named_modules()}
    absent = [name for name in comfyui_zimage_diffusers_to_comfy(ZIMAGE_TRANSFORMER) if name not in modules]
    # ComfyUI routes a modulation for the context refiner too, which has none.
    assert absent == ["context_refiner.0.adaLN_modulation.0", "context_refiner.1.adaLN_modulation.0"]


@pytest.mark.parametrize(
    ("lora_name", "target"),
    [
        (
            "lycoris_layers_0_attention_to_k",
            ComfyTarget("diffusion_model.layers.0.attention.qkv.weight", (3840, 3840)),
        ),
        ("lycoris_layers_29_attention_to_out_0", ldm("layers.29.attention.out")),
        ("lycoris_noise_refiner_1_feed_forward_w3", ldm("noise_refiner.1.feed_forward.w3")),
        ("lycoris_context_refiner_0_attention_to_q",
         ComfyTarget("diffusion_model.context_refiner.0.attention.qkv.weight", (0, 3840))),
        ("lycoris_all_x_embedder_2-1", ldm("x_embedder")),
    ],
)  # fmt: skip
def test_zimage_correspondences(lora_name: str, target: ComfyTarget) -> None:
    assert comfyui_zimage_key_map(ZIMAGE_TRANSFORMER)[lora_name] == target


# --- Qwen-Image: ComfyUI's module names are diffusers' own ---------------------------------------------------

QWEN_IMAGE_TRANSFORMER = {  # Qwen-Image transformer/config.json (QwenImageTransformer2DModel's defaults)
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "in_channels": 64,
    "joint_attention_dim": 3584,
    "num_attention_heads": 24,
    "num_layers": 60,
    "out_channels": 16,
    "patch_size": 2,
}


@pytest.mark.parametrize("name", ["qwen-image", "tiny"])
def test_every_qwenimage_block_linear_is_mapped(name: str, tiny_models: dict) -> None:
    from diffusers import QwenImageTransformer2DModel

    config = QWEN_IMAGE_TRANSFORMER
    if name == "tiny":
        built = json.loads((tiny_models["qwenimage"] / "transformer" / "config.json").read_text(encoding="utf-8"))
        config = {key: value for key, value in built.items() if not key.startswith("_")}
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**config)
    blocks = [name for name in layers(transformer) if name.startswith("transformer_blocks.")]
    for leaf in ("attn.to_q", "attn.add_v_proj", "img_mlp.net.2", "txt_mod.1"):
        assert any(block.endswith("." + leaf) for block in blocks), leaf
    state = {f"transformer.{n}.lora_{ab}.weight": torch.zeros(1) for n in blocks for ab in "AB"}
    exported = list(to_kohya(state, alpha=4.0, denoiser_prefix="lycoris_"))
    known = comfyui_lora_names("qwenimage", config)
    assert unmapped_kohya_modules(exported, known) == []
    assert "lycoris_transformer_blocks_0_img_mlp_net_0_proj" in known and "lycoris_proj_out" in known
    assert unmapped_kohya_modules(exported_keys("transformer", blocks[:1]), known)  # not lora_transformer_


@pytest.mark.parametrize("name", ["qwen-image-2.1", "tiny"])
def test_every_qwenimage21_block_linear_is_mapped(name: str, tiny_models: dict) -> None:
    """ComfyUI's Qwen-Image 2.1 model has diffusers' module names (its MLP's gate_layer and proj fused into
    gate_up, which its loader addresses by those halves): every block linear an adapter can target is mapped."""
    from diffusers import QwenImage21Transformer2DModel

    config = {key: value for key, value in gpu.architectures()["qwenimage21"]["config"].items() if key[0] != "_"}
    if name == "tiny":
        built = json.loads((tiny_models["qwenimage21"] / "transformer" / "config.json").read_text(encoding="utf-8"))
        config = {key: value for key, value in built.items() if not key.startswith("_")}
    with torch.device("meta"):
        transformer = QwenImage21Transformer2DModel(**config)
    blocks = [name for name in layers(transformer) if name.startswith("transformer_blocks.")]
    for leaf in ("attn.to_q", "attn.to_out.0", "img_mlp.gate_layer", "img_mlp.proj", "img_mlp.out"):
        assert any(block.endswith("." + leaf) for block in blocks), leaf
    state = {f"transformer.{n}.lora_{ab}.weight": torch.zeros(1) for n in blocks for ab in "AB"}
    exported = list(to_kohya(state, alpha=4.0, denoiser_prefix="lycoris_"))
    known = comfyui_lora_names("qwenimage21", config)
    assert unmapped_kohya_modules(exported, known) == []
    assert "lycoris_transformer_blocks_0_img_mlp_gate_layer" in known


# FLUX.2 [klein] 9B, as bench/gpu.py has it (which checks its size: 9.08 B).
FLUX2_KLEIN_9B_TRANSFORMER = {
    key: value for key, value in gpu.architectures()["flux2-klein-9b"]["config"].items() if not key.startswith("_")
}


@pytest.mark.parametrize("name", ["klein-9b", "tiny"])
def test_every_flux2_block_linear_is_mapped(name: str, tiny_models: dict) -> None:
    """ComfyUI's FLUX.2 model is a `comfy.model_base.Flux` subclass: its LoRA names come from the same
    `flux_to_diffusers` table, whose FLUX.2 spellings route the single blocks' fused `to_qkv_mlp_proj` and
    `to_out` onto `linear1` and `linear2`, and the SwiGLU feed-forwards onto `img_mlp` / `txt_mlp`. Every
    block linear our adapters can target is mapped (the shared modulation is outside the blocks)."""
    from diffusers import Flux2Transformer2DModel

    config = FLUX2_KLEIN_9B_TRANSFORMER
    if name == "tiny":
        built = json.loads((tiny_models["flux2-klein"] / "transformer" / "config.json").read_text(encoding="utf-8"))
        config = {key: value for key, value in built.items() if not key.startswith("_")}
    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(**config)
    blocks = [n for n in layers(transformer) if n.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    for leaf in ("attn.to_q", "attn.add_v_proj", "ff.linear_in", "ff_context.linear_out", "attn.to_qkv_mlp_proj"):
        assert any(block.endswith("." + leaf) for block in blocks), leaf
    known = comfyui_lora_names("flux2-klein", config)
    assert unmapped_kohya_modules(exported_keys("transformer", blocks), known) == []
    # The fused single-block projection lands on the whole of `linear1`, not a q/k/v slice of it.
    targets = comfyui_flux_key_map(config)
    fused = targets["lora_transformer_single_transformer_blocks_0_attn_to_qkv_mlp_proj"]
    assert fused == ComfyTarget("diffusion_model.single_blocks.0.linear1.weight")


# --- HiDream-I1: ComfyUI's module names are diffusers' own ---------------------------------------------------

# HiDream-I1's transformer, as bench/gpu.py has it (which checks its size: 17.1 B).
HIDREAM_TRANSFORMER = {
    key: value for key, value in gpu.architectures()["hidream"]["config"].items() if not key.startswith("_")
}


@pytest.mark.parametrize("name", ["hidream-i1", "tiny"])
def test_every_hidream_block_linear_is_mapped(name: str, tiny_models: dict) -> None:
    """Every linear of both block kinds our adapters can target (attention of both streams, the shared and
    routed experts, the caption stream's feed-forward, the modulation) has a ComfyUI name, under `lycoris_`
    and not `lora_transformer_`."""
    from diffusers import HiDreamImageTransformer2DModel

    config = HIDREAM_TRANSFORMER
    if name == "tiny":
        built = json.loads((tiny_models["hidream"] / "transformer" / "config.json").read_text(encoding="utf-8"))
        config = {key: value for key, value in built.items() if not key.startswith("_")}
    with torch.device("meta"):
        transformer = HiDreamImageTransformer2DModel(**config)
    blocks = [n for n in layers(transformer) if n.startswith(("double_stream_blocks.", "single_stream_blocks."))]
    for leaf in ("attn1.to_q", "attn1.to_out_t", "ff_i.experts.3.w2", "ff_i.shared_experts.w1", "ff_t.w3"):
        assert any(block.endswith("." + leaf) for block in blocks), leaf
    state = {f"transformer.{n}.lora_{ab}.weight": torch.zeros(1) for n in blocks for ab in "AB"}
    exported = list(to_kohya(state, alpha=4.0, denoiser_prefix="lycoris_"))
    known = comfyui_lora_names("hidream", config)
    assert unmapped_kohya_modules(exported, known) == []
    assert "lycoris_single_stream_blocks_0_block_ff_i_experts_0_w1" in known
    assert "lycoris_caption_projection_0_linear" in known and "lycoris_final_layer_linear" in known
    assert unmapped_kohya_modules(exported_keys("transformer", blocks[:1]), known)  # not lora_transformer_


@pytest.mark.parametrize("name", ["ernie-image", "tiny"])
def test_every_ernie_image_block_linear_is_mapped_under_lora_unet(name: str, tiny_models: dict) -> None:
    """ComfyUI's ERNIE-Image model keeps diffusers' names: every linear of its layers our adapters can target
    (attention and the gated MLP) is mapped as `lora_unet_<name>`, and `lora_transformer_` is not."""
    from diffusers import ErnieImageTransformer2DModel

    config = {key: value for key, value in gpu.architectures()["ernie-image"]["config"].items() if key[0] != "_"}
    if name == "tiny":
        built = json.loads((tiny_models["ernie-image"] / "transformer" / "config.json").read_text(encoding="utf-8"))
        config = {key: value for key, value in built.items() if not key.startswith("_")}
    with torch.device("meta"):
        transformer = ErnieImageTransformer2DModel(**config)
    blocks = [n for n in layers(transformer) if n.startswith("layers.")]
    for leaf in ("self_attention.to_q", "self_attention.to_out.0", "mlp.gate_proj", "mlp.linear_fc2"):
        assert any(block.endswith("." + leaf) for block in blocks), leaf
    state = {f"transformer.{n}.lora_{ab}.weight": torch.zeros(1) for n in blocks for ab in "AB"}
    known = comfyui_lora_names("ernie-image", config)
    assert unmapped_kohya_modules(list(to_kohya(state, alpha=4.0, denoiser_prefix="lora_unet_")), known) == []
    assert "lora_unet_layers_0_self_attention_to_out_0" in known and "lora_unet_final_linear" in known
    assert unmapped_kohya_modules(list(to_kohya(state, alpha=4.0)), known)  # not lora_transformer_


@pytest.mark.parametrize("name", ["krea2", "tiny"])
def test_every_krea2_block_linear_is_mapped_under_lycoris(name: str, tiny_models: dict) -> None:
    """Every linear of the image blocks and of ComfyUI's 2 + 2 text-fusion blocks our adapters can target
    (attention with its gate, the SwiGLU) has a ComfyUI name under `lycoris_`, and `lora_transformer_` does not."""
    from diffusers import Krea2Transformer2DModel

    config = {key: value for key, value in gpu.architectures()["krea2"]["config"].items() if key[0] != "_"}
    if name == "tiny":
        built = json.loads((tiny_models["krea2"] / "transformer" / "config.json").read_text(encoding="utf-8"))
        config = {key: value for key, value in built.items() if not key.startswith("_")}
    with torch.device("meta"):
        transformer = Krea2Transformer2DModel(**config)
    prefixes = ("transformer_blocks.", "text_fusion.layerwise_blocks.", "text_fusion.refiner_blocks.")
    blocks = [n for n in layers(transformer) if n.startswith(prefixes)]
    for leaf in ("attn.to_q", "attn.to_gate", "attn.to_out.0", "ff.gate", "ff.down"):
        assert any(block.endswith("." + leaf) for block in blocks), leaf
    state = {f"transformer.{n}.lora_{ab}.weight": torch.zeros(1) for n in blocks for ab in "AB"}
    known = comfyui_lora_names("krea2", config)
    assert unmapped_kohya_modules(list(to_kohya(state, alpha=4.0, denoiser_prefix="lycoris_")), known) == []
    assert "lycoris_text_fusion_refiner_blocks_1_attn_to_gate" in known and "lycoris_final_layer_linear" in known
    assert unmapped_kohya_modules(list(to_kohya(state, alpha=4.0)), known)  # not lora_transformer_


@pytest.mark.parametrize("name", ["ideogram4", "tiny"])
def test_ideogram4_adapters_are_written_on_comfyuis_fused_attention_and_read_back(name: str, tiny_models: dict) -> None:
    """ComfyUI's Ideogram 4 model has one fused qkv weight per layer and `attention.o`: every block linear our
    adapters target maps to a `lora_unet_` name once q, k and v are fused; the fused adapter makes the same
    update as the three, and splitting it gives them back exactly."""
    from diffusers import Ideogram4Transformer2DModel

    from training.engine.families.ideogram4.comfyui import fuse_attention, split_attention

    config = {key: value for key, value in gpu.architectures()["ideogram4"]["config"].items() if key[0] != "_"}
    if name == "tiny":
        built = json.loads((tiny_models["ideogram4"] / "transformer" / "config.json").read_text(encoding="utf-8"))
        config = {key: value for key, value in built.items() if not key.startswith("_")}
    with torch.device("meta"):
        transformer = Ideogram4Transformer2DModel(**config)
    blocks = [n for n in layers(transformer) if n.startswith("layers.")]
    state = {f"transformer.{n}.lora_{ab}.weight": torch.zeros(1) for n in blocks for ab in "AB"}
    known = comfyui_lora_names("ideogram4", config)
    names = {key.split(".")[0] for key in fuse_attention(to_kohya(state, alpha=4.0, denoiser_prefix="lora_unet_"))}
    assert unmapped_kohya_modules([f"{n}.alpha" for n in names], known) == []
    assert "lora_unet_layers_0_attention_qkv" in known and "lora_unet_layers_0_attention_o" in known

    # The fusion is exact: the fused up @ down is the three updates stacked.
    hidden, rank = 8, 2
    generator = torch.Generator().manual_seed(0)
    separate = {}
    for part in "qkv":
        separate[f"lora_unet_layers_0_attention_to_{part}.lora_down.weight"] = torch.randn(
            rank, hidden, generator=generator
        )
        separate[f"lora_unet_layers_0_attention_to_{part}.lora_up.weight"] = torch.randn(
            hidden, rank, generator=generator
        )
        separate[f"lora_unet_layers_0_attention_to_{part}.alpha"] = torch.tensor(4.0)
    fused = fuse_attention(separate)
    update = (
        fused["lora_unet_layers_0_attention_qkv.lora_up.weight"]
        @ fused["lora_unet_layers_0_attention_qkv.lora_down.weight"]
    )
    stacked = torch.cat(
        [
            separate[f"lora_unet_layers_0_attention_to_{p}.lora_up.weight"]
            @ separate[f"lora_unet_layers_0_attention_to_{p}.lora_down.weight"]
            for p in "qkv"
        ]
    )
    assert torch.allclose(update, stacked)
    assert float(fused["lora_unet_layers_0_attention_qkv.alpha"]) / 6 == 4.0 / 2  # alpha / rank kept
    restored = split_attention(fused)
    assert restored.keys() == separate.keys() and all(torch.equal(restored[k], separate[k]) for k in separate)
