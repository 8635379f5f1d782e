"""Which kohya-layout LoRA module names ComfyUI maps onto a model: an independent re-statement for tests.

Nothing here is imported from ComfyUI or copied from it. The rules were read in ComfyUI's sources
(github.com/comfyanonymous/ComfyUI, now Comfy-Org/ComfyUI) and written down again so that our tests can
check that every module of an exported `lora_kohya.safetensors` is one ComfyUI understands. Each family's
own map is in its folder (training/engine/families/<folder>/comfyui.py, a `lora_names(config)` function);
what every family shares is here:

- `comfy/lora.py`, `model_lora_keys_unet` builds the map for the model; `load_lora` then reads, for every
  mapped name, `<name>.alpha`, `<name>.dora_scale` and whatever suffixes the weight adapters ask for; any
  other key of the file is logged as "lora key not loaded". `comfy/lora_convert.py`, `convert_lora`,
  rewrites only a few foreign layouts (BFL control, Wan Fun, USO, fused Krea2 to_qkv) that our files never
  match.
- `comfy/weight_adapter/` (`lora.py`, `loha.py`, `lokr.py`, `glora.py`, `oft.py`, `boft.py`), each
  adapter's `load`: the key suffixes in `ADAPTER_SUFFIXES`.
- Models whose ComfyUI module names are diffusers' own (Qwen-Image, HiDream) are registered as
  `lycoris_<name with _>`: `comfyui_same_name_lora_names`.

Like ComfyUI, the maps name a few modules that a given diffusers model may lack (every resnet's
`conv_shortcut`, the last level's downsampler, the last up block's upsampler); a name in the map means
"ComfyUI would route it", not "the model has it".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

UNET_PREFIX = "lora_unet_"


FLUX_PREFIX = "lora_transformer_"


ZIMAGE_PREFIX = "lycoris_"


@dataclass(frozen=True)
class ComfyTarget:
    """The ComfyUI weight a LoRA name lands on.

    `rows` is `(start, length)` along dim 0 when only a slice of a fused weight is patched (FLUX's q/k/v
    in `qkv`/`linear1`); `swap_scale_shift` marks FLUX's `norm_out.linear`, whose halves ComfyUI swaps."""

    key: str
    rows: tuple[int, int] | None = None
    swap_scale_shift: bool = False


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
    """The kohya module names ComfyUI maps for a model of `family` with this diffusers denoiser config
    (ValueError for a family whose folder has no map)."""
    from training.engine.families import family_module

    try:
        module = family_module(family, "comfyui")
    except ModuleNotFoundError:
        raise ValueError(f"no ComfyUI key map for the {family} family") from None
    names: set[str] = module.lora_names(denoiser_config)
    return names


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
