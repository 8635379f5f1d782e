"""Exporting trained weights: adapters in diffusers/PEFT layout and in kohya/LyCORIS (ComfyUI) layout, with
metadata that kohya, ComfyUI, A1111 and civitai-style readers show; and loading those files back.

Adapter kinds and their tensors, per adapted module (`<c>` is the pipeline component: `unet`,
`transformer`, `text_encoder`, `text_encoder_2`; `<m>` the dotted module name inside it):

| kind | diffusers/PEFT layout (`<c>.<m>.<suffix>`)            | kohya/LyCORIS layout (`lora_<c>_<m with _>.<suffix>`)  |
| ---- | ----------------------------------------------------- | ------------------------------------------------------ |
| lora | `lora_A.weight`, `lora_B.weight`                      | `lora_down.weight`, `lora_up.weight`, `alpha`          |
| dora | the above + `lora_magnitude_vector` (out,) / (1,out,1,1) | the above + `dora_scale` (out, 1) / (out, 1, 1, 1)  |
| lokr | `lokr_w1` or `lokr_w1_a`+`lokr_w1_b`; `lokr_w2` or `lokr_w2_a`+`lokr_w2_b` (+ `lokr_t2`) | same names, `alpha` |
| loha | `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (+ `hada_t1`, `hada_t2`)             | same names, `alpha` |

The diffusers-layout file of a LoRA/DoRA is what diffusers' `save_lora_weights` writes; for LoKr/LoHa the
trainer writes PEFT's own state dict (`get_peft_model_state_dict`, e.g.
`transformer.single_transformer_blocks.0.attn.to_q.hada_w1_a`) under the same `<c>.` prefix. Every adapter file
(both layouts) records the PEFT config as JSON under `ADAPTER_CONFIG_KEY`, which `load_adapter_file` needs to
rebuild a LoKr/LoHa: diffusers cannot load those itself.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from contract.families import family_facts
from contract.parameters import LORA_TYPES
from training.engine.errors import EngineError
from training.engine.families import family_of_pipeline

if TYPE_CHECKING:
    from training.engine.families.base import Family
    from training.engine.spec import TrainingSpec

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS_NAME = "lora_kohya.safetensors"
FULL_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# Metadata key holding the adapter's PEFT config as JSON (`PeftConfig.to_dict()`, sets as sorted lists).
# Needed to load LoKr/LoHa files (diffusers cannot); written for every adapter kind.
ADAPTER_CONFIG_KEY = "adapter_config"
# Where diffusers' `save_lora_weights` puts the config it is given, keys prefixed with the component.
DIFFUSERS_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
ADAPTER_NAME = "default"

LORA_TYPE_LABELS = {"lora": "LoRA", "dora": "DoRA", "lokr": "LoKr", "loha": "LoHa"}

# kohya prefixes: `lora_unet_` for a UNet, `lora_transformer_` for a diffusers-named transformer (what
# ComfyUI maps for diffusers FLUX names), `lora_te_` (SD 1.x) or `lora_te1_`/`lora_te2_` (SDXL) for text encoders.
KOHYA_PREFIX = {"unet": "lora_unet_", "transformer": "lora_transformer_", "text_encoder_2": "lora_te2_"}
# A transformer family whose ComfyUI loader reads another prefix says so (its facts' `kohya_prefix`): Z-Image's
# (ComfyUI's Lumina2 branch) reads LyCORIS-style `lycoris_<diffusers name>`, ERNIE-Image's ComfyUI's generic
# `lora_unet_<module name>` over names that are diffusers' own. Files with any of them load here.
TRANSFORMER_KOHYA_PREFIXES = ("lora_transformer_", "lycoris_", "lora_unet_")
KOHYA_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_")
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")

# PEFT suffix -> kohya/LyCORIS suffix; the LoKr and LoHa names are the same on both sides.
LOKR_SUFFIXES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LOHA_SUFFIXES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
TO_KOHYA_SUFFIX = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
    **{suffix: suffix for suffix in LOKR_SUFFIXES + LOHA_SUFFIXES},
}
FROM_KOHYA_SUFFIX = {kohya: peft for peft, kohya in TO_KOHYA_SUFFIX.items()}
ADAPTER_KEY = re.compile(
    r"^(?P<component>unet|transformer|text_encoder|text_encoder_2)\.(?P<module>.+)\."
    r"(?P<suffix>lora_[AB]\.weight|lora_magnitude_vector(?:\.weight)?|lokr_w[12](?:_[ab])?|lokr_t2|hada_w[12]_[ab]|hada_t[12])$"
)

# sd-scripts' `ss_base_model_version` and the Stability ModelSpec architecture id of each family are facts of
# its record (contract/families.py). Adapters append "/lora" to the ModelSpec id (ModelSpec's "/" separator,
# sd-scripts' ADAPTER_LORA); sd-scripts writes "/lora" for every network it trains, LyCORIS ones (LoKr, LoHa,
# DoRA) included, and neither ModelSpec nor sd-scripts defines another suffix.
MODELSPEC_ADAPTER_SUFFIX = "/lora"
# The version of the spec whose keys we write (its README: "This is specification version 1.0.1"; sd-scripts
# writes the same). 1.0.1 added only optional keys to 1.0.0.
MODELSPEC_VERSION = "1.0.1"
# "The model's tensor keys generally will match variable names within the official codebase": ours are
# diffusers module names in both layouts, for every family (sd-scripts writes "diffusers" for its SD 1.x
# LoRAs, whose keys are diffusers names too; its SDXL and FLUX LoRAs use SGM/BFL names, which ours do not).
MODELSPEC_IMPLEMENTATION = "diffusers"
# The kohya network modules: sd-scripts' own LoRA (LoCon when convolutions are trained), and LyCORIS for the
# others (sd-scripts' networks.lora has no DoRA; DoRA files with `dora_scale` come from LyCORIS' "dora_wd").
SS_NETWORK_MODULE = {"lora": "networks.lora", "dora": "lycoris.kohya", "lokr": "lycoris.kohya", "loha": "lycoris.kohya"}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Rewrite a safetensors file with `metadata` merged into its header."""
    with safe_open(str(path), framework="pt") as handle:
        existing = handle.metadata() or {}
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={**existing, **metadata})


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


# --- Metadata ------------------------------------------------------------------------------------------


def base_model_label(base_model: str) -> str:
    """The base model as recorded in a file's metadata: a hub id (`owner/name`) as it is, a local folder
    (or single file) by its own name only, never the path that leads to it (a server's layout, a home dir)."""
    text = base_model.strip()
    path = Path(text).expanduser()
    is_local = (
        path.is_absolute()
        or text.startswith(("~", ".", "/", "\\"))
        or "\\" in text
        or path.exists()
        or HUB_ID.match(text) is None
    )
    if not is_local:
        return text
    return Path(text.replace("\\", "/").rstrip("/")).name or text


def peft_config_json(config: Any) -> str:
    """A PEFT config as the JSON stored under `ADAPTER_CONFIG_KEY` (sets as sorted lists, enums as names)."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def plain(value: Any) -> Any:
        if isinstance(value, set | frozenset):
            return sorted(plain(item) for item in value)
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {str(key): plain(item) for key, item in value.items()}
        if isinstance(value, enum.Enum):
            return value.value  # PeftType, TaskType
        return value

    return json.dumps(plain(values), sort_keys=True)


def _network_args(lora_type: str, adapter_config: dict[str, Any]) -> dict[str, str]:
    """`ss_network_args` as LyCORIS' kohya entry point reads them (`--network_args key=value`, values strings)."""
    if lora_type == "lora":
        return {}
    args = {"algo": "lora" if lora_type == "dora" else lora_type}
    if lora_type == "dora":
        args.update(dora_wd="True", wd_on_output="True")  # PEFT's magnitude is per output row
    if lora_type == "lokr":
        args["factor"] = str(adapter_config.get("decompose_factor", -1))
        if adapter_config.get("decompose_both"):
            args["decompose_both"] = "True"
    if lora_type in ("lokr", "loha") and adapter_config.get("use_effective_conv2d"):
        args["use_tucker"] = "True"
    return args


def lora_metadata(
    *,
    family: str,
    base_model: str,
    trigger_word: str,
    training_type: str,
    lora_type: str,
    rank: int,
    alpha: float,
    steps: int,
    resolution: int,
    learning_rate: float,
    dataset_hash: str,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The metadata of an exported file: our own keys, kohya/sd-scripts' `ss_*` training keys, and the
    Stability ModelSpec `modelspec.*` keys. `extra` is merged last (it may override any key); when it holds
    `ADAPTER_CONFIG_KEY`, the LyCORIS network args are taken from that config."""
    facts = family_facts(family)  # a ValueError for an unknown family
    if lora_type not in LORA_TYPES:
        raise ValueError(f"unknown lora_type {lora_type!r}; known: {', '.join(LORA_TYPES)}")
    label = base_model_label(base_model)
    is_adapter = training_type == "LORA"
    kind = LORA_TYPE_LABELS[lora_type] if is_adapter else "fine-tune"
    title = f"{trigger_word} {kind}" if trigger_word else f"{kind} of {label}"
    metadata: dict[str, str] = {
        "base_model": label,
        "family": family,
        "trigger_word": trigger_word,
        "training_type": training_type,
        "lora_type": lora_type,
        "rank": str(rank),
        "alpha": str(alpha),
        "steps": str(steps),
        "resolution": str(resolution),
        "learning_rate": str(learning_rate),
        "dataset_hash": dataset_hash,
        # kohya/sd-scripts (train_network.py); the values as it writes them (str() of its Python values).
        "ss_base_model_version": facts.kohya_base_model_version,
        "ss_v2": "False",
        "ss_sd_model_name": label,
        "ss_output_name": title,
        "ss_training_comment": f"trigger word: {trigger_word}" if trigger_word else "",
        "ss_resolution": str((resolution, resolution)),
        "ss_max_train_steps": str(steps),
        "ss_steps": str(steps),
        "ss_learning_rate": str(learning_rate),
        "ss_unet_lr": str(learning_rate),
        # Stability ModelSpec.
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": facts.modelspec_architecture + (MODELSPEC_ADAPTER_SUFFIX if is_adapter else ""),
        "modelspec.implementation": MODELSPEC_IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    if trigger_word:
        metadata["modelspec.trigger_phrase"] = trigger_word
        metadata["modelspec.usage_hint"] = f"Trigger word: {trigger_word}"
    if is_adapter:
        adapter_config: dict[str, Any] = {}
        if extra and extra.get(ADAPTER_CONFIG_KEY):
            adapter_config = json.loads(extra[ADAPTER_CONFIG_KEY])
        metadata["ss_network_module"] = SS_NETWORK_MODULE[lora_type]
        metadata["ss_network_dim"] = str(rank)
        metadata["ss_network_alpha"] = str(alpha)
        network_args = _network_args(lora_type, adapter_config)
        if network_args:
            metadata["ss_network_args"] = json.dumps(network_args)
    metadata.update({key: str(value) for key, value in (extra or {}).items()})
    return metadata


# --- kohya / LyCORIS layout ----------------------------------------------------------------------------


def _kohya_prefix(component: str, *, two_text_encoders: bool, denoiser_prefix: str | None = None) -> str:
    if denoiser_prefix and component in ("unet", "transformer"):
        return denoiser_prefix
    if component == "text_encoder":
        return KOHYA_TEXT_ENCODER_PREFIXES[1 if two_text_encoders else 0]
    return KOHYA_PREFIX[component]


def _adapter_kind(parts: Mapping[str, torch.Tensor], name: str) -> str:
    """The kind of one module's tensors (by PEFT suffix); ValueError when they are incomplete or mixed."""
    names = set(parts)
    if names <= {"lora_A.weight", "lora_B.weight", "lora_magnitude_vector"}:
        if not {"lora_A.weight", "lora_B.weight"} <= names:
            raise ValueError(f"{name}: a LoRA needs both lora_A and lora_B, found {sorted(names)}")
        return "dora" if "lora_magnitude_vector" in names else "lora"
    if names <= set(LOKR_SUFFIXES):
        w1 = "lokr_w1" in names or {"lokr_w1_a", "lokr_w1_b"} <= names
        w2 = "lokr_w2" in names or {"lokr_w2_a", "lokr_w2_b"} <= names
        if not (w1 and w2):
            raise ValueError(f"{name}: a LoKr needs w1 (or w1_a, w1_b) and w2 (or w2_a, w2_b), found {sorted(names)}")
        return "lokr"
    if names <= set(LOHA_SUFFIXES):
        if not {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= names:
            raise ValueError(f"{name}: a LoHa needs hada_w1_a/b and hada_w2_a/b, found {sorted(names)}")
        return "loha"
    raise ValueError(f"{name}: tensors of different adapter kinds: {sorted(names)}")


def _lokr_is_full(parts: Mapping[str, Any]) -> bool:
    # ComfyUI and A1111 use the scale alpha / rank only when a factor is decomposed (the rank is read from
    # it); with both Kronecker factors full they use 1, so PEFT's alpha / r must be folded into the weights.
    return "lokr_w1" in parts and "lokr_w2" in parts


def to_kohya(
    diffusers_state: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    rank: int | None = None,
    denoiser_prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """A diffusers/PEFT-layout adapter state dict (any of LoRA, DoRA, LoKr, LoHa) in kohya/LyCORIS names:
    `unet.down_blocks.0…to_q.lora_A.weight` -> `lora_unet_down_blocks_0…to_q.lora_down.weight`, one `.alpha`
    per module (ComfyUI's scale is alpha / rank, as PEFT's). DoRA's magnitude becomes `dora_scale` shaped
    (out, 1[, 1, 1]), LyCORIS' `wd_on_output` layout that ComfyUI recognises by its first dimension.

    `rank` (PEFT's `r`) is needed only for LoKr modules whose two Kronecker factors are both full: readers
    ignore alpha there, so PEFT's scale alpha / r is multiplied into `lokr_w1`. A uniform `alpha`/`r` is
    assumed (no PEFT `rank_pattern`/`alpha_pattern`)."""
    modules: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in diffusers_state.items():
        match = ADAPTER_KEY.match(key)
        if match is None:
            raise ValueError(f"unexpected adapter key {key!r}")
        suffix = match["suffix"].removesuffix(".weight") if "magnitude" in match["suffix"] else match["suffix"]
        modules.setdefault((match["component"], match["module"]), {})[suffix] = tensor
    two_text_encoders = any(component == "text_encoder_2" for component, _ in modules)
    converted: dict[str, torch.Tensor] = {}
    for (component, module), parts in modules.items():
        if component.startswith("text_encoder") and module.startswith("encoder."):
            # transformers 5 dropped CLIP's `text_model.` level; kohya names (and ComfyUI's map) keep it.
            module = "text_model." + module
        prefix = _kohya_prefix(component, two_text_encoders=two_text_encoders, denoiser_prefix=denoiser_prefix)
        name = prefix + module.replace(".", "_")
        kind = _adapter_kind(parts, f"{component}.{module}")
        for suffix, tensor in parts.items():
            if suffix == "lora_magnitude_vector":
                # PEFT: (out,) for a Linear, (1, out, 1, 1) for a Conv2d; LyCORIS/ComfyUI: (out, 1, ...).
                tensor = tensor.unsqueeze(1) if tensor.dim() == 1 else tensor.transpose(0, 1)
            converted[f"{name}.{TO_KOHYA_SUFFIX[suffix]}"] = tensor.contiguous()
        if kind == "lokr" and _lokr_is_full(parts):
            if rank is None:
                raise ValueError(f"{component}.{module}: a LoKr with both factors full needs the rank to export")
            converted[f"{name}.lokr_w1"] = (parts["lokr_w1"] * (float(alpha) / rank)).contiguous()
        converted[f"{name}.alpha"] = torch.tensor(float(alpha))
    return converted


def from_kohya(
    kohya_state: Mapping[str, torch.Tensor],
    module_names: list[str] | Mapping[str, list[str]],
    component: str | None = None,
    *,
    rank: int | None = None,
) -> dict[str, torch.Tensor]:
    """The inverse of `to_kohya`, given the dotted names of the modules the adapter may be on: a list for
    one `component`, or a mapping component -> names. `rank` as for `to_kohya` (full-factor LoKr only)."""
    if isinstance(module_names, Mapping):
        names_by_component = {key: list(value) for key, value in module_names.items()}
    else:
        if component is None:
            raise ValueError("from_kohya needs the component when given a list of module names")
        names_by_component = {component: list(module_names)}
    by_flat: dict[str, tuple[str, str]] = {}
    for owner, names in names_by_component.items():
        prefixes: tuple[str, ...]
        if owner == "text_encoder":
            prefixes = KOHYA_TEXT_ENCODER_PREFIXES
        elif owner == "transformer":
            prefixes = TRANSFORMER_KOHYA_PREFIXES
        else:
            prefixes = (KOHYA_PREFIX[owner],)
        for prefix in prefixes:
            for name in names:
                by_flat[prefix + name.replace(".", "_")] = (owner, name)
                if owner.startswith("text_encoder") and name.startswith("encoder."):
                    by_flat[prefix + "text_model_" + name.replace(".", "_")] = (owner, name)  # see to_kohya
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in kohya_state.items():
        flat, _, suffix = key.partition(".")
        if flat not in by_flat:
            raise ValueError(f"kohya key {key!r} names no known module")
        if suffix != "alpha" and suffix not in FROM_KOHYA_SUFFIX:
            raise ValueError(f"kohya key {key!r} has an unknown suffix {suffix!r}")
        grouped.setdefault(flat, {})[suffix] = tensor
    converted: dict[str, torch.Tensor] = {}
    for flat, parts in grouped.items():
        owner, name = by_flat[flat]
        alpha = parts.pop("alpha", None)
        full_lokr = _lokr_is_full(parts)
        for suffix, tensor in parts.items():
            if suffix == "dora_scale":
                # (out, 1) -> (out,) for a Linear; (out, 1, 1, 1) -> (1, out, 1, 1) for a Conv2d.
                tensor = tensor.reshape(-1) if tensor.dim() == 2 else tensor.transpose(0, 1)
            elif suffix == "lokr_w1" and full_lokr:
                if alpha is None or rank is None:
                    raise ValueError(f"{flat}: a LoKr with both factors full needs its alpha and the rank")
                tensor = tensor / (float(alpha) / rank)
            converted[f"{owner}.{name}.{FROM_KOHYA_SUFFIX[suffix]}"] = tensor.contiguous()
    return converted


def write_kohya(
    diffusers_path: Path,
    kohya_path: Path,
    *,
    alpha: float,
    metadata: dict[str, str],
    denoiser_prefix: str | None = None,
) -> Path:
    """The kohya/ComfyUI copy of a diffusers-layout adapter file (the rank is read from `metadata`)."""
    state = load_file(str(diffusers_path))
    rank = int(metadata["rank"]) if metadata.get("rank") else None
    save_file(
        to_kohya(state, alpha=alpha, rank=rank, denoiser_prefix=denoiser_prefix),
        str(kohya_path),
        metadata={**metadata, "format": "pt", "layout": "kohya"},
    )
    return kohya_path


# --- Loading an adapter file into a pipeline -------------------------------------------------------------


def adapter_kind(state: Mapping[str, torch.Tensor]) -> str:
    """ "lora", "dora", "lokr" or "loha", from a file's tensor names (either layout)."""
    if any(".hada_" in key for key in state):
        return "loha"
    if any(".lokr_" in key for key in state):
        return "lokr"
    if any("lora_magnitude_vector" in key or key.endswith(".dora_scale") for key in state):
        return "dora"
    return "lora"


def _is_kohya_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return any(key.startswith(("lora_", "lycoris_")) for key in state)


def _component_of_kohya_key(key: str, pipeline: Any) -> str:
    if key.startswith(KOHYA_PREFIX["unet"]):
        # ComfyUI's generic prefix for a denoiser's own module names: a UNet's, or a transformer's whose
        # ComfyUI names are diffusers' (ERNIE-Image).
        return "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
    for component in ("transformer", "text_encoder_2"):
        if key.startswith(KOHYA_PREFIX[component]):
            return component
    if key.startswith(TRANSFORMER_KOHYA_PREFIXES):
        return "transformer"
    if key.startswith(KOHYA_TEXT_ENCODER_PREFIXES):
        return "text_encoder"
    raise EngineError(f"adapter key {key!r} names no pipeline component this engine knows")


def _peft_config(config: Mapping[str, Any]) -> Any:
    """A PEFT config object from its `to_dict()` form, ignoring fields this PEFT version does not have."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import PeftType

    peft_type = str(config.get("peft_type", ""))
    try:
        config_class = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(peft_type)]
    except (ValueError, KeyError):
        raise EngineError(f"adapter config names an unknown PEFT type {peft_type!r}") from None
    fields = {field.name for field in dataclasses.fields(config_class) if field.init and field.name != "peft_type"}
    return config_class(**{key: value for key, value in config.items() if key in fields})


def _adapter_config_for(metadata: Mapping[str, str], component: str, denoiser_key: str) -> dict[str, Any]:
    """The PEFT config of the adapter on `component`: `adapter_config.<component>`, else (for the denoiser)
    `adapter_config`, else what diffusers' `save_lora_weights` recorded for that component."""
    for key in (f"{ADAPTER_CONFIG_KEY}.{component}", ADAPTER_CONFIG_KEY if component == denoiser_key else ""):
        if key and metadata.get(key):
            return dict(json.loads(metadata[key]))
    packed = json.loads(metadata.get(DIFFUSERS_ADAPTER_METADATA_KEY) or "{}")
    prefix = f"{component}."
    config = {key.removeprefix(prefix): value for key, value in packed.items() if key.startswith(prefix)}
    if not config:
        raise EngineError(
            f"this adapter file has no PEFT config for its {component} (metadata key {ADAPTER_CONFIG_KEY!r}); "
            "LoKr and LoHa files cannot be loaded without it"
        )
    return config


def _kohya_lora_to_diffusers(pipeline: Any, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA/DoRA in diffusers/PEFT names for `pipeline`, each module's alpha / rank folded into
    its up weight (diffusers then takes alpha = rank, scale 1: the same weights, DoRA's included)."""
    scaled = dict(state)
    for key, alpha in state.items():
        if key.endswith(".alpha"):
            name = key.removesuffix(".alpha")
            rank = state[f"{name}.lora_down.weight"].shape[0]
            scaled[f"{name}.lora_up.weight"] = state[f"{name}.lora_up.weight"] * (float(alpha) / rank)
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in scaled.items():
        by_component.setdefault(_component_of_kohya_key(key, pipeline), {})[key] = tensor
    converted: dict[str, torch.Tensor] = {}
    for component, part in by_component.items():
        model = getattr(pipeline, component, None)
        if model is None:
            raise EngineError(f"this adapter is for a {component}, which the base model does not have")
        try:
            converted.update(from_kohya(part, [name for name, _ in model.named_modules() if name], component))
        except ValueError as exc:
            raise EngineError(f"this adapter does not fit the base model: {exc}") from exc
    return converted


def load_weights_file(pipeline: Any, path: Path) -> str:
    """Apply a trained result to `pipeline`: a FULL fine-tune's denoiser weights replace the base's; an
    adapter file is loaded as `load_adapter_file` says. Returns "full" or the adapter's kind."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"weights file {path} does not exist")
    metadata = read_metadata(path)
    if metadata.get("training_type") == "FULL":
        component = metadata.get("component") or (
            "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
        )
        denoiser = getattr(pipeline, component)
        weights = load_file(str(path))
        denoiser.load_state_dict({key: value.to(denoiser.dtype) for key, value in weights.items()})
        return "full"
    return load_adapter_file(pipeline, path)


def load_adapter_file(pipeline: Any, path: Path) -> str:
    """Load a LoRA, DoRA, LoKr or LoHa file (diffusers/PEFT or kohya/LyCORIS layout) into `pipeline`;
    returns its kind. LoRA and DoRA go through diffusers' `load_lora_weights`; LoKr and LoHa, which
    diffusers cannot load, are injected with PEFT from the config in the file's metadata, as is every kind
    for a pipeline whose own loader cannot (PRX's)."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"LoRA weights file {path} does not exist")
    state = load_file(str(path))
    metadata = read_metadata(path)
    kind = adapter_kind(state)
    family = family_of_pipeline(pipeline)
    if _is_kohya_layout(state):
        state = family.kohya_modules(state)  # a family whose ComfyUI names fuse modules splits them again
    if kind in ("lora", "dora") and family.diffusers_lora_loading:
        if _is_kohya_layout(state) and any(_component_of_kohya_key(key, pipeline) == "transformer" for key in state):
            # diffusers reads kohya files of UNets, and of FLUX only with BFL names (`lora_unet_double_blocks_…`),
            # not with the diffusers names (`lora_transformer_…`) ComfyUI reads and we write: convert them here.
            pipeline.load_lora_weights(_kohya_lora_to_diffusers(pipeline, state))
        else:
            pipeline.load_lora_weights(str(path.parent), weight_name=path.name)
        return kind

    from peft import inject_adapter_in_model, set_peft_model_state_dict

    denoiser_key = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    if _is_kohya_layout(state):
        for key, tensor in state.items():
            by_component.setdefault(_component_of_kohya_key(key, pipeline), {})[key] = tensor
        for component, part in list(by_component.items()):
            model = getattr(pipeline, component, None)
            if model is None:
                raise EngineError(f"this adapter is for a {component}, which the base model does not have")
            config = _adapter_config_for(metadata, component, denoiser_key)
            names = [name for name, _ in model.named_modules() if name]
            try:
                by_component[component] = from_kohya(part, names, component, rank=int(config["r"]))
            except ValueError as exc:
                raise EngineError(f"this adapter does not fit the base model: {exc}") from exc
    else:
        for key, tensor in state.items():
            component, _, _ = key.partition(".")
            if component not in COMPONENTS:
                raise EngineError(f"adapter key {key!r} names no pipeline component this engine knows")
            by_component.setdefault(component, {})[key] = tensor
    for component, part in by_component.items():
        model = getattr(pipeline, component, None)
        if model is None:
            raise EngineError(f"this adapter is for a {component}, which the base model does not have")
        config = _peft_config(_adapter_config_for(metadata, component, denoiser_key))
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
        prefix = f"{component}."
        result = set_peft_model_state_dict(
            model, {key.removeprefix(prefix): tensor for key, tensor in part.items()}, adapter_name=ADAPTER_NAME
        )
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        markers = ("lokr_", "hada_", "lora_")
        missing = [key for key in getattr(result, "missing_keys", []) or [] if any(m in key for m in markers)]
        if unexpected or missing:
            raise EngineError(
                f"this adapter does not fit the base model's {component}: "
                f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]}), {len(missing)} missing (e.g. {missing[:3]})"
            )
        model.eval()
    return kind


def _with_text_model_level(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP text encoder keys with the `text_model.` level every LoRA file has: transformers 5 dropped it
    from the module names, and diffusers strips it again when loading into such a model."""
    return {("text_model." + key if key.startswith("encoder.") else key): value for key, value in state.items()}


# --- the run's result files ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Exported:
    weights_path: Path
    kohya_path: Path | None
    metadata: dict[str, str]


def export_weights(
    *,
    spec: TrainingSpec,
    family: Family,
    denoiser: torch.nn.Module,
    alpha: float,
    resolution: int,
    dataset_hash: str,
    weight_dtype: torch.dtype,
    text_encoders: dict[str, torch.nn.Module] | None = None,
    full_state: dict[str, torch.Tensor] | None = None,
) -> Exported:
    """The result files of a run: the adapter in diffusers/PEFT layout and in kohya/LyCORIS layout (with
    the text encoders' adapters when those were trained), or (FULL) the denoiser's weights, each with
    the run's metadata. `full_state`: a sharded FULL run's weights, gathered whole."""
    from training.engine.adapters import adapter_metadata, adapter_state_dict

    extra: dict[str, str] = {}
    if spec.training_type == "LORA":
        extra[ADAPTER_CONFIG_KEY] = json.dumps(adapter_metadata(denoiser))
        extra["ss_network_train_unet_only"] = str(not text_encoders)
        if text_encoders:
            extra["ss_text_encoder_lr"] = str(spec.text_encoder_rate)
    metadata = lora_metadata(
        family=family.name,
        base_model=spec.base_model,
        trigger_word=spec.trigger_word,
        training_type=spec.training_type,
        lora_type=spec.lora_type,
        rank=spec.rank,
        alpha=alpha,
        steps=spec.steps,
        resolution=resolution,
        learning_rate=spec.learning_rate,
        dataset_hash=dataset_hash,
        extra=extra,
    )
    if spec.training_type != "LORA":
        weights_path = spec.output_dir / FULL_WEIGHTS_NAME
        state = {
            name: tensor.detach().to("cpu", weight_dtype).contiguous()
            for name, tensor in (full_state if full_state is not None else denoiser.state_dict()).items()
        }
        save_file(state, str(weights_path), metadata={**metadata, "format": "pt", "component": family.denoiser_key})
        return Exported(weights_path=weights_path, kohya_path=None, metadata=metadata)
    state = adapter_state_dict(denoiser)
    weights_path = spec.output_dir / LORA_WEIGHTS_NAME
    if spec.lora_type in ("lora", "dora"):
        encoders = {
            component: (_with_text_model_level(adapter_state_dict(encoder)), adapter_metadata(encoder))
            for component, encoder in (text_encoders or {}).items()
        }
        family.save_lora(
            state,
            str(spec.output_dir),
            LORA_WEIGHTS_NAME,
            json.loads(extra[ADAPTER_CONFIG_KEY]),
            text_encoders=encoders,
        )
    else:
        # diffusers has no writer for LoKr/LoHa: PEFT's own tensor names under the component's prefix.
        prefixed = {
            f"{family.denoiser_key}.{name}": tensor.detach().cpu().contiguous() for name, tensor in state.items()
        }
        save_file(prefixed, str(weights_path), metadata={"format": "pt"})
    add_metadata(weights_path, {**metadata, "layout": "diffusers"})
    if not family.facts().comfyui:
        return Exported(weights_path=weights_path, kohya_path=None, metadata=metadata)  # no ComfyUI loader to write for
    kohya_path = family.write_kohya(weights_path, spec.output_dir / KOHYA_WEIGHTS_NAME, alpha=alpha, metadata=metadata)
    return Exported(weights_path=weights_path, kohya_path=kohya_path, metadata=metadata)
