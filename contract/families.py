"""The model families: one plain-data facts record each, and which family a base model belongs to (from
its own diffusers config). Shared by the domain (the cost estimate, the start rules, the admin's labels)
and the engine (export metadata, generation); everything that needs a fact about a family asks here by
the family's key.

A new family is one `FamilyFacts` record in `FAMILIES` plus one folder in the engine
(training/engine/families/<folder>/); docs/adding-a-family.md lists the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path


class UnknownBaseModel(ValueError):
    """A base model whose family cannot be told; the message says why and what would do."""


@dataclass(frozen=True)
class FamilyFacts:
    key: str  # the family's name everywhere: API answers, task rows, file metadata
    label: str  # what the admin and the docs call it
    pipelines: tuple[str, ...]  # diffusers pipeline classes (model_index.json `_class_name`) of the family
    denoiser: str  # the pipeline component that is trained: "unet" or "transformer"
    # The side in pixels its published models train at: the estimate's unit before a model is local.
    native_resolution: int
    # Relative cost of one step at the native resolution (SD 1.5 at 512 px is 1), and its seconds per
    # step on the reference GPU (an H100; see bench/).
    cost_weight: Decimal
    seconds_per_step: float
    # A regular expression for hub ids (lower case) that name the family, for estimates before a model is
    # fetched; the longest match among all families wins.
    name_pattern: str
    # File metadata: sd-scripts' `ss_base_model_version` and the Stability ModelSpec architecture id.
    kohya_base_model_version: str
    modelspec_architecture: str
    # The kohya-layout prefix of the denoiser's modules where ComfyUI's loader for the family reads
    # another than the component's usual one (`lora_unet_`, `lora_transformer_`).
    kohya_prefix: str | None = None
    # The published size is the denoiser's `sample_size` (in latent pixels) times the VAE's downscale
    # (UNets, SD 3.5); other transformers' configs carry no usable sample size.
    size_from_sample_size: bool = False
    # The published size is a key of the pipeline's own config (model_index.json), where models of the family
    # are published at several sizes (PRX at 256, 512 and 1024 px).
    size_from_pipeline_config: str | None = None
    trains_pairs: bool = False  # learns edits from before/after pairs (an edit model)
    needs_pairs: bool = False  # learns edits only (a text-to-image model cannot be trained on it)
    # How many conditioning images a pair may carry (the pipeline's reference images).
    max_sources: int = 1
    # ComfyUI runs the family: a kohya-layout file is written under the names its loader maps.
    comfyui: bool = True
    # For the docs' family table (markdown_table): the published models it covers, what the caption is read
    # by (and how), and anything its row must add to what it trains.
    models: str = ""
    conditioning: str = ""
    trains_note: str = ""
    # `train_text_encoder` applies: a LoRA on the text encoder(s) too (the engine family's text_encoder_tokenizers).
    text_encoder_lora: bool = False


# In the order the admin, the API's lists and the docs show them.
FAMILIES: tuple[FamilyFacts, ...] = (
    FamilyFacts(
        key="sd15",
        label="SD 1.5",
        pipelines=("StableDiffusionPipeline",),
        denoiser="unet",
        native_resolution=512,
        cost_weight=Decimal("1"),
        seconds_per_step=0.07,
        name_pattern=r"stable-diffusion-v1|sd15|sd-1",
        # sd-scripts' `get_model_version_str_for_sd1_sd2` and ModelSpec's ARCH_SD_V1.
        kohya_base_model_version="sd_v1",
        modelspec_architecture="stable-diffusion-v1",
        size_from_sample_size=True,
        models="SD 1.x",
        conditioning="CLIP",
        text_encoder_lora=True,
    ),
    FamilyFacts(
        key="sdxl",
        label="SDXL",
        pipelines=("StableDiffusionXLPipeline",),
        denoiser="unet",
        native_resolution=1024,
        cost_weight=Decimal("3"),
        seconds_per_step=0.2,
        name_pattern=r"xl",
        # sd-scripts' sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0 and ModelSpec's ARCH_SD_XL_V1_BASE.
        kohya_base_model_version="sdxl_base_v1-0",
        modelspec_architecture="stable-diffusion-xl-v1-base",
        size_from_sample_size=True,
        models="",
        conditioning="two CLIPs, size and crop",
        text_encoder_lora=True,
    ),
    FamilyFacts(
        key="flux",
        label="FLUX.1",
        pipelines=("FluxPipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("8"),
        seconds_per_step=0.5,
        name_pattern=r"flux",
        # sd-scripts' flux_utils.MODEL_VERSION_FLUX_V1 (one value for every FLUX.1 variant). The family is
        # FLUX.1 [dev]'s layout (guidance embedding): ModelSpec's "flux-1-dev".
        kohya_base_model_version="flux1",
        modelspec_architecture="flux-1-dev",
        models="FLUX.1 dev, schnell",
        conditioning="CLIP pooled + T5 (512 tokens), guidance (dev)",
    ),
    FamilyFacts(
        key="flux-kontext",
        label="FLUX.1 Kontext",
        pipelines=("FluxKontextPipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("10"),
        seconds_per_step=0.7,
        name_pattern=r"kontext",
        kohya_base_model_version="flux1",
        # Nothing defines an id for Kontext: our choice, following "flux-1-dev" and BFL's model name.
        modelspec_architecture="flux-1-kontext-dev",
        trains_pairs=True,
        needs_pairs=True,
        models="",
        conditioning="as FLUX.1, plus the source image's tokens",
    ),
    FamilyFacts(
        key="sd3",
        label="SD 3.5",
        pipelines=("StableDiffusion3Pipeline",),
        denoiser="transformer",
        native_resolution=1024,
        # Large (8.1 B) and medium (2.5 B) share the family; priced and timed as large.
        cost_weight=Decimal("6"),
        seconds_per_step=0.4,
        name_pattern=r"stable-diffusion-3|sd3|sd-3",
        # No sd-scripts constant was found for SD 3.x; "sd3" is the prefix readers classify its files by.
        # ModelSpec: sd-scripts' ARCH_SD3_M ("may be followed by -m or -5-large"), the family's id.
        kohya_base_model_version="sd3",
        modelspec_architecture="stable-diffusion-3",
        # Its transformer counts its sample size in latent pixels, as a UNet does (128 -> 1024 px).
        size_from_sample_size=True,
        models="SD 3.5 large, medium; SD 3 medium",
        conditioning="two CLIPs + T5 (256 tokens), pooled CLIPs",
    ),
    FamilyFacts(
        key="chroma",
        label="Chroma",
        pipelines=("ChromaPipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("6"),  # 8.9 B, a FLUX.1 without the guidance and modulation weights
        seconds_per_step=0.4,
        name_pattern=r"chroma",
        # sd-scripts names its architecture "chroma" (ARCH_FLUX_1_CHROMA).
        kohya_base_model_version="chroma",
        modelspec_architecture="chroma",
        models="Chroma1-HD, -Base",
        conditioning="T5 (512 tokens, masked past the caption)",
    ),
    FamilyFacts(
        key="zimage",
        label="Z-Image",
        pipelines=("ZImagePipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("5"),  # 6.2 B
        seconds_per_step=0.35,
        name_pattern=r"z-image|zimage",
        # "zimage" is our choice, beside sd-scripts' ModelSpec id "z-image" (ARCH_ZIMAGE_UNKNOWN).
        kohya_base_model_version="zimage",
        modelspec_architecture="z-image",
        # ComfyUI's loader (its Lumina2 branch) reads `lycoris_<diffusers name>`.
        kohya_prefix="lycoris_",
        models="Z-Image, Z-Image-Turbo",
        conditioning="Qwen3 (the prompt in its chat format, up to 512 tokens)",
    ),
    FamilyFacts(
        key="qwenimage",
        label="Qwen-Image",
        pipelines=("QwenImagePipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("14"),  # 20 B
        seconds_per_step=0.9,
        name_pattern=r"qwen-image|qwenimage",
        # Both our choice: no sd-scripts or ModelSpec id was found for it.
        kohya_base_model_version="qwen_image",
        modelspec_architecture="qwen-image",
        # ComfyUI's Qwen-Image loader reads `lycoris_<diffusers name>` (or diffusers' own names).
        kohya_prefix="lycoris_",
        models="Qwen-Image",
        conditioning="Qwen2.5-VL (last layer, the pipeline's system template cut off, up to 512 tokens)",
    ),
    FamilyFacts(
        key="qwenimage21",
        label="Qwen-Image 2.1",
        pipelines=("QwenImage21Pipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("5"),  # 7.1 B, one stream
        seconds_per_step=0.35,
        name_pattern=r"qwen-image-2\.1|qwen-image-21|qwenimage-?2\.?1",
        # Both our choice, after Qwen-Image's.
        kohya_base_model_version="qwen_image_21",
        modelspec_architecture="qwen-image-2.1",
        # ComfyUI's qwen_image21 model shares Qwen-Image's LoRA branch (`lycoris_<diffusers name>`, its fused
        # img_mlp.gate_up addressed by the gate_layer and proj halves).
        kohya_prefix="lycoris_",
        models="Qwen-Image 2.1",
        conditioning="Qwen3-VL (last layer before its final norm, the pipeline's own encoding, no length cut)",
        trains_note="generates RGBA",
    ),
    FamilyFacts(
        key="qwenimage-edit",
        label="Qwen-Image-Edit",
        pipelines=("QwenImageEditPlusPipeline",),  # 2509 and 2511 (which sets the transformer's zero_cond_t)
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("28"),  # Qwen-Image's 20 B over twice the tokens: the target's and one reference's
        seconds_per_step=1.8,
        name_pattern=r"qwen-image-edit|qwenimage-edit|qwenimageedit",
        # Both our choice, after Qwen-Image's.
        kohya_base_model_version="qwen_image_edit",
        modelspec_architecture="qwen-image-edit",
        kohya_prefix="lycoris_",  # ComfyUI loads the edit models with its Qwen-Image loader
        trains_pairs=True,
        needs_pairs=True,
        max_sources=3,  # Qwen's card for 2509: one to three input images
        models="Qwen-Image-Edit 2509, 2511",
        conditioning="Qwen2.5-VL reading the sources with the instruction (edit template, 64 tokens cut), plus the sources' tokens",
    ),
    FamilyFacts(
        key="flux2-klein",
        label="FLUX.2 klein",
        pipelines=("Flux2KleinPipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("6"),  # priced as the 9 B (the 4 B shares the family)
        seconds_per_step=0.4,
        name_pattern=r"flux\.2.*klein|flux2.*klein",
        # Both our choice, in sd-scripts' FLUX naming.
        kohya_base_model_version="flux2",
        modelspec_architecture="flux-2-klein",
        trains_pairs=True,  # edits through its reference images (`image`), beside text-to-image
        max_sources=4,
        models="FLUX.2 klein 4B, 9B, base and distilled",
        conditioning="Qwen3 (layers 9, 18 and 27 side by side, the prompt in its chat format, 512 tokens)",
    ),
    FamilyFacts(
        key="flux2",
        label="FLUX.2 dev",
        pipelines=("Flux2Pipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("22"),  # 32 B
        seconds_per_step=1.4,
        name_pattern=r"flux\.2|flux2",
        kohya_base_model_version="flux2",
        modelspec_architecture="flux-2-dev",  # our choice, as "flux-1-dev"
        trains_pairs=True,  # edits through its reference images (`image`), beside text-to-image
        max_sources=4,
        models="FLUX.2 dev",
        conditioning="Mistral Small 3.1 (layers 10, 20 and 30 side by side, after BFL's system message, 512 tokens), guidance",
    ),
    FamilyFacts(
        key="hidream",
        label="HiDream-I1",
        pipelines=("HiDreamImagePipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("12"),  # 17 B, of which 2 of 4 routed experts run per token
        seconds_per_step=0.8,
        name_pattern=r"hidream",
        # Both our choice: no sd-scripts or ModelSpec id was found for it.
        kohya_base_model_version="hidream",
        modelspec_architecture="hidream-i1",
        # ComfyUI's HiDream loader reads `lycoris_<diffusers name>` (SimpleTuner's layout).
        kohya_prefix="lycoris_",
        models="HiDream-I1 Full, Dev, Fast",
        conditioning="CLIP-L + CLIP-G pooled, T5-XXL and one Llama 3.1 8B layer per block (128 tokens each)",
    ),
    FamilyFacts(
        key="ernie-image",
        label="ERNIE-Image",
        pipelines=("ErnieImagePipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("6"),  # 8.0 B, dense
        seconds_per_step=0.45,
        name_pattern=r"ernie",
        # Both our choice: no sd-scripts or ModelSpec id was found for it.
        kohya_base_model_version="ernie_image",
        modelspec_architecture="ernie-image",
        # ComfyUI's ERNIE-Image model has diffusers' own module names; its loader maps them under the generic
        # kohya prefix `lora_unet_` (not `lora_transformer_` or `lycoris_`).
        kohya_prefix="lora_unet_",
        models="ERNIE-Image, -Turbo",
        conditioning="Ministral 3 (second-to-last layer, the prompt as written, each caption at its own length, up to 512 tokens)",
    ),
    FamilyFacts(
        key="krea2",
        label="Krea 2",
        pipelines=("Krea2Pipeline",),
        denoiser="transformer",
        native_resolution=1024,
        cost_weight=Decimal("9"),  # 12.8 B, dense
        seconds_per_step=0.6,
        name_pattern=r"krea-2|krea2",
        # Both our choice: no sd-scripts or ModelSpec id was found for it.
        kohya_base_model_version="krea2",
        modelspec_architecture="krea-2",
        # ComfyUI's Krea 2 loader maps diffusers' names under `lycoris_` (and `transformer.`), not `lora_transformer_`.
        kohya_prefix="lycoris_",
        models="Krea 2 Raw, Turbo",
        conditioning="Qwen3-VL (12 depths stacked per token, Qwen-Image's template, 512 tokens, padding masked)",
    ),
    FamilyFacts(
        key="prx",
        label="PRX",
        pipelines=("PRXPipeline",),
        denoiser="transformer",
        native_resolution=1024,  # prx-1024-t2i; the 256 and 512 px models say theirs in their pipeline config
        cost_weight=Decimal("2"),  # 1.2 B
        seconds_per_step=0.15,
        name_pattern=r"prx",
        # Both our choice: no sd-scripts or ModelSpec id was found for it.
        kohya_base_model_version="prx",
        modelspec_architecture="prx",
        size_from_pipeline_config="default_sample_size",
        comfyui=False,  # ComfyUI has no PRX model, so no kohya file is written for it
        models="PRX 256/512/1024 t2i on FLUX.1's VAE",
        conditioning="T5Gemma encoder (the prompt cleaned as the pipeline cleans it, 256 tokens, padding masked)",
        trains_note="no ComfyUI file",
    ),
    FamilyFacts(
        key="ideogram4",
        label="Ideogram 4",
        pipelines=("Ideogram4Pipeline",),
        denoiser="transformer",
        native_resolution=1024,  # generated up to 2048 px; trained here at 1024 unless `resolution` says more
        cost_weight=Decimal("7"),  # 9.3 B trained (the unconditional twin stays frozen and unloaded)
        seconds_per_step=0.6,
        name_pattern=r"ideogram",
        # Both our choice: no sd-scripts or ModelSpec id was found for it.
        kohya_base_model_version="ideogram4",
        modelspec_architecture="ideogram-4",
        # ComfyUI's loader has no Ideogram 4 branch: its generic `lora_unet_<name>` over the original names, whose
        # attention is one fused qkv (the family's own writer fuses the adapters).
        kohya_prefix="lora_unet_",
        models="Ideogram 4",
        conditioning="Qwen3-VL-8B (13 decoder layers interleaved per token, its chat template, each caption at its own length, up to 2048 tokens)",
        trains_note="ComfyUI file for LoRA and DoRA; of the conditional transformer",
    ),
)
FAMILY_KEYS = tuple(facts.key for facts in FAMILIES)
SUPPORTED_FAMILIES = FAMILY_KEYS
_BY_KEY = {facts.key: facts for facts in FAMILIES}
PIPELINE_FAMILIES = {pipeline: facts.key for facts in FAMILIES for pipeline in facts.pipelines}
# What the admin and the docs call each family.
FAMILY_LABELS = {facts.key: facts.label for facts in FAMILIES}
# A hub id that names no family is estimated as this one.
FALLBACK_GUESS = "flux"
# The family of the tiny base model the demo and the tests build first (the cheapest to train on a CPU).
DEMO_FAMILY = "sd15"


def family_facts(family: str) -> FamilyFacts:
    try:
        return _BY_KEY[family]
    except KeyError:
        raise UnknownBaseModel(f"unknown family {family!r}; known: {', '.join(FAMILY_KEYS)}") from None


def edit_families() -> tuple[FamilyFacts, ...]:
    """The families that learn edits from before/after pairs."""
    return tuple(facts for facts in FAMILIES if facts.trains_pairs)


def max_pair_sources() -> int:
    """The most source images any family's pair may carry: the dataset's limit (a run checks its own family's)."""
    return max(facts.max_sources for facts in FAMILIES)


def vae_downscale(vae_config: dict) -> int:
    """Pixels per latent pixel along a side: an image VAE halves per level after the first; Qwen-Image's
    video VAE (Wan 2.1's) halves once per entry of `temperal_downsample`."""
    if "temperal_downsample" in vae_config:
        return int(2 ** len(vae_config["temperal_downsample"]))
    return int(2 ** (len(vae_config["block_out_channels"]) - 1))


def native_resolution(family: str, *, vae_config: dict, denoiser_config: dict) -> int:
    """The side in pixels a base model was trained at, from its VAE's and denoiser's configs: what a
    training with no `resolution` uses (the family classes and the cost estimate both ask here)."""
    facts = family_facts(family)
    vae_scale = vae_downscale(vae_config)
    if facts.size_from_sample_size:
        return int(denoiser_config["sample_size"]) * vae_scale
    # A full-size VAE means the published size; a small one is a test model's, as large as its VAE's sample.
    return facts.native_resolution if vae_scale == 8 else int(vae_config.get("sample_size", 64))


def local_native_resolution(base_model: str, family: str) -> int | None:
    """native_resolution of a local diffusers folder (None for a hub id or an unreadable folder)."""
    folder = Path(base_model)
    key = family_facts(family).size_from_pipeline_config
    try:
        if key is not None:
            return int(json.loads((folder / "model_index.json").read_text(encoding="utf-8"))[key])
        vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        denoiser = family_facts(family).denoiser
        denoiser_config = json.loads((folder / denoiser / "config.json").read_text(encoding="utf-8"))
        return native_resolution(family, vae_config=vae_config, denoiser_config=denoiser_config)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def detect_family(base_model: str) -> str:
    """The family named by a local diffusers folder's (or a reachable hub model's) model_index.json."""
    index_path = _model_index(base_model)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnknownBaseModel(f"base model {base_model!r}: cannot read model_index.json ({exc})") from exc
    class_name = str(index.get("_class_name", ""))
    family = PIPELINE_FAMILIES.get(class_name)
    if family is None:
        raise UnknownBaseModel(
            f"base model {base_model!r} is a {class_name or 'unknown'} pipeline; "
            f"supported pipelines: {', '.join(PIPELINE_FAMILIES)}"
        )
    return family


def guess_family_from_name(base_model: str) -> str:
    """For estimates before a hub model is fetched: the family whose name pattern matches the most of the
    name (FLUX.2 klein's "flux.2-klein" over FLUX.2's "flux.2" over FLUX.1's "flux"), FLUX.1 if none does."""
    name = base_model.lower()
    best, longest = FALLBACK_GUESS, 0
    for facts in FAMILIES:
        for match in re.finditer(facts.name_pattern, name):
            if len(match.group(0)) > longest:
                best, longest = facts.key, len(match.group(0))
    return best


def _model_index(base_model: str) -> Path:
    local = Path(base_model)
    if local.is_dir():
        index = local / "model_index.json"
        if not index.is_file():
            raise UnknownBaseModel(f"base model folder {base_model!r} has no model_index.json (not a diffusers folder)")
        return index
    if local.is_absolute() or base_model.startswith("."):
        raise UnknownBaseModel(f"base model folder {base_model!r} does not exist")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(base_model, "model_index.json"))
    except Exception as exc:  # any hub failure: offline, unknown repo, gated, no network
        raise UnknownBaseModel(
            f"base model {base_model!r} is neither a local diffusers folder nor a hub id this machine "
            f"can fetch ({type(exc).__name__}); download it once and set base_model_path to its folder"
        ) from exc


def markdown_table() -> str:
    """The docs' family table, generated from the records (tests/test_docs.py keeps the docs showing it)."""
    lines = [
        "| family | pipeline class | trains | default resolution | conditioning |",
        "|---|---|---|---|---|",
    ]
    for facts in FAMILIES:
        name = f"`{facts.key}` ({facts.models})" if facts.models else f"`{facts.key}`"
        pipelines = ", ".join(f"`{pipeline}`" for pipeline in facts.pipelines)
        pairs = f"pairs of up to {facts.max_sources} sources" if facts.max_sources > 1 else "before/after pairs"
        if facts.needs_pairs:
            trains = f"edit LoRA/DoRA/LoKr/LoHa on {pairs} (type `edit`), FULL"
        else:
            trains = "LoRA/DoRA/LoKr/LoHa, FULL"
            if facts.trains_pairs:
                trains += f"; edit LoRA on {pairs} (type `edit`)"
        if facts.text_encoder_lora:
            trains += ", text-encoder LoRA"
        if facts.trains_note:
            trains += f" ({facts.trains_note})"
        size = "the model's own" if facts.size_from_pipeline_config else str(facts.native_resolution)
        lines.append(f"| {name} | {pipelines} | {trains} | {size} | {facts.conditioning} |")
    return "\n".join(lines)
