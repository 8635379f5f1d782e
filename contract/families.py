"""The model families: which one a base model belongs to (from its own diffusers config) and the size
it was trained at. Shared by the domain (the cost estimate, the start rules) and the engine."""

from __future__ import annotations

import json
from pathlib import Path


class UnknownBaseModel(ValueError):
    """A base model whose family cannot be told; the message says why and what would do."""


PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
    "FluxKontextPipeline": "flux-kontext",
    "StableDiffusion3Pipeline": "sd3",
    "ChromaPipeline": "chroma",
    "ZImagePipeline": "zimage",
    "QwenImagePipeline": "qwenimage",
    "Flux2KleinPipeline": "flux2-klein",
    "Flux2Pipeline": "flux2",
    "HiDreamImagePipeline": "hidream",
}
SUPPORTED_FAMILIES = tuple(PIPELINE_FAMILIES.values())
# What the admin and the docs call each family.
FAMILY_LABELS = {
    "sd15": "SD 1.5",
    "sdxl": "SDXL",
    "flux": "FLUX.1",
    "flux-kontext": "FLUX.1 Kontext",
    "sd3": "SD 3.5",
    "chroma": "Chroma",
    "zimage": "Z-Image",
    "qwenimage": "Qwen-Image",
    "flux2-klein": "FLUX.2 klein",
    "flux2": "FLUX.2 dev",
    "hidream": "HiDream-I1",
}


def vae_downscale(vae_config: dict) -> int:
    """Pixels per latent pixel along a side: an image VAE halves per level after the first; Qwen-Image's
    video VAE (Wan 2.1's) halves once per entry of `temperal_downsample`."""
    if "temperal_downsample" in vae_config:
        return int(2 ** len(vae_config["temperal_downsample"]))
    return int(2 ** (len(vae_config["block_out_channels"]) - 1))


def native_resolution(family: str, *, vae_config: dict, denoiser_config: dict) -> int:
    """The side in pixels a base model was trained at, from its VAE's and denoiser's configs: what a
    training with no `resolution` uses (the family classes and the cost estimate both ask here)."""
    vae_scale = vae_downscale(vae_config)
    if family in ("sd15", "sdxl", "sd3"):
        # SD 3.5's transformer counts its sample size in latent pixels, as a UNet does (128 -> 1024 px).
        return int(denoiser_config["sample_size"]) * vae_scale
    # FLUX configs carry no usable sample size for the transformer: full-size VAEs mean 1024 px.
    return 1024 if vae_scale == 8 else int(vae_config.get("sample_size", 64))


def local_native_resolution(base_model: str, family: str) -> int | None:
    """native_resolution of a local diffusers folder (None for a hub id or an unreadable folder)."""
    folder = Path(base_model)
    denoiser = "unet" if family in ("sd15", "sdxl") else "transformer"
    try:
        vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
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
    """For estimates before a hub model is fetched: the family its name suggests, the costliest if unclear."""
    name = base_model.lower()
    if "stable-diffusion-3" in name or "sd3" in name or "sd-3" in name:
        return "sd3"
    if "qwen-image" in name or "qwenimage" in name:
        return "qwenimage"
    if "z-image" in name or "zimage" in name:
        return "zimage"
    if "hidream" in name:
        return "hidream"
    if "chroma" in name:
        return "chroma"
    if "flux.2" in name or "flux2" in name:
        return "flux2-klein" if "klein" in name else "flux2"
    if "kontext" in name:
        return "flux-kontext"
    if "flux" in name:
        return "flux"
    if "xl" in name:
        return "sdxl"
    if "stable-diffusion-v1" in name or "sd15" in name or "sd-1" in name:
        return "sd15"
    return "flux"


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
