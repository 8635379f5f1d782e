"""The kohya names ComfyUI maps for Ideogram 4, and the fusion of our adapters into them.

ComfyUI's Ideogram 4 model (`comfy/ldm/ideogram4/model.py`) keeps Ideogram's original names, which are diffusers'
but for each layer's attention: one fused `attention.qkv` (q, k and v as consecutive row blocks, as the original
`self.qkv(x).view(..., 3, heads, head_dim)` reads them) and `attention.o` for `attention.to_out.0`. `comfy/lora.py`
has no Ideogram 4 branch in `model_lora_keys_unet`: its generic loop maps `lora_unet_<name, dots as _>` (and
`diffusion_model.<name>`) for every weight of the model, so those are the names to write (ai-toolkit writes the
`diffusion_model.` form of the same)."""

from __future__ import annotations

import re
from typing import Any

import torch

from training.engine.errors import EngineError

PREFIX = "lora_unet_"
SEPARATE = re.compile(r"^(?P<layer>lora_unet_layers_\d+_attention_)to_(?P<part>[qkv])\.(?P<suffix>.+)$")
FUSED = re.compile(r"^(?P<layer>lora_unet_layers_\d+_attention_)qkv\.(?P<suffix>.+)$")
PARTS = ("q", "k", "v")


def comfyui_name(diffusers_name: str) -> str:
    """A module's name in ComfyUI's Ideogram 4 model."""
    name = re.sub(r"\.attention\.to_[qkv]$", ".attention.qkv", diffusers_name)
    return re.sub(r"\.attention\.to_out\.0$", ".attention.o", name)


def lora_names(denoiser_config: dict) -> set[str]:
    import diffusers

    values = {key: value for key, value in denoiser_config.items() if not key.startswith("_")}
    with torch.device("meta"):
        model: Any = diffusers.Ideogram4Transformer2DModel(**values)
    return {
        PREFIX + comfyui_name(name).replace(".", "_")
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def fuse_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA/DoRA of diffusers' module names under ComfyUI's: each layer's q, k and v adapters as one
    on the fused `qkv` (downs stacked, ups block-diagonal, alpha tripled with the rank; DoRA's per-row magnitudes
    stacked), `to_out_0` as `o`."""
    fused: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        match = SEPARATE.match(key)
        if match is None:
            fused[key.replace("_attention_to_out_0.", "_attention_o.")] = tensor
        else:
            groups.setdefault(match["layer"], {}).setdefault(match["suffix"], {})[match["part"]] = tensor
    for layer, suffixes in groups.items():
        for suffix, parts in suffixes.items():
            if set(parts) != set(PARTS):
                raise EngineError(
                    f"{layer}: ComfyUI fuses q, k and v; an adapter on {sorted(parts)} alone cannot be written"
                )
            ordered = [parts[part] for part in PARTS]
            if suffix == "lora_down.weight":
                value = torch.cat(ordered)
            elif suffix == "lora_up.weight":
                value = torch.block_diag(*ordered)
            elif suffix == "alpha":
                value = ordered[0] * len(PARTS)  # alpha / rank unchanged with the rank tripled
            elif suffix == "dora_scale":
                value = torch.cat(ordered)
            else:
                raise EngineError(f"{layer}: a {suffix} adapter cannot be fused into ComfyUI's qkv")
            fused[f"{layer}qkv.{suffix}"] = value.contiguous()
    return fused


def split_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `fuse_attention`, for a kohya file in ComfyUI's Ideogram 4 names (ours or ai-toolkit's
    layout with kohya names): a fused qkv adapter as q, k and v ones (a general fused one splits as diffusers'
    own converter splits it: the down weight shared, the up weight's row blocks)."""
    split: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = FUSED.match(key)
        if match is None:
            split[key.replace("_attention_o.", "_attention_to_out_0.")] = tensor
        else:
            fused.setdefault(match["layer"], {})[match["suffix"]] = tensor
    for layer, parts in fused.items():
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        rows, columns = up.shape[0] // len(PARTS), down.shape[0] // len(PARTS)
        block_diagonal = all(
            not up[i * rows : (i + 1) * rows, : i * columns].any()
            and not up[i * rows : (i + 1) * rows, (i + 1) * columns :].any()
            for i in range(len(PARTS))
        )
        for index, part in enumerate(PARTS):
            name = f"{layer}to_{part}"
            block = slice(index * rows, (index + 1) * rows)
            if block_diagonal:
                lanes = slice(index * columns, (index + 1) * columns)
                split[f"{name}.lora_down.weight"] = down[lanes].contiguous()
                split[f"{name}.lora_up.weight"] = up[block, lanes].contiguous()
                if "alpha" in parts:
                    split[f"{name}.alpha"] = parts["alpha"] / len(PARTS)
            else:
                split[f"{name}.lora_down.weight"] = down.contiguous()
                split[f"{name}.lora_up.weight"] = up[block].contiguous()
                if "alpha" in parts:
                    split[f"{name}.alpha"] = parts["alpha"]
            if "dora_scale" in parts:
                split[f"{name}.dora_scale"] = parts["dora_scale"][block].contiguous()
    return split
