"""What every family adapter provides to the generic training loop.

A family knows its encoders, how to noise a batch of latents for its objective (epsilon / v
prediction, rectified flow) and how its denoiser is called. The loss itself (its type, weighting,
mask and prior preservation) is computed once, in the trainer, for every family. Its plain facts
(label, pipelines, costs, export ids) are its record in contract/families.py."""

from __future__ import annotations

import contextlib
import gc
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from contract.families import FamilyFacts, family_facts
from contract.parameters import default
from training.engine.errors import EngineError

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class NoiseSettings:
    """How training noise and timesteps are drawn (defaults and meanings: contract/parameters.py)."""

    noise_offset: float = default("noise_offset")
    min_snr_gamma: float | None = default("min_snr_gamma")
    timestep_sampling: str = default("timestep_sampling")
    logit_mean: float = default("logit_mean")
    logit_std: float = default("logit_std")
    sigmoid_scale: float = default("sigmoid_scale")
    timestep_shift: float | None = default("timestep_shift")
    guidance_scale: float = default("guidance_scale")
    bypass_guidance_embedding: bool = default("bypass_guidance_embedding")


@dataclass
class NoisedBatch:
    """A batch at its drawn noise level: what the denoiser sees and what it should predict."""

    noisy: torch.Tensor  # (B, C, H, W), the denoiser's latent space
    timesteps: torch.Tensor  # (B,), in the units the denoiser takes
    target: torch.Tensor  # (B, C, H, W)
    weights: torch.Tensor | None = None  # (B,) per-sample loss weights (min-SNR), or None for equal


class Family(ABC):
    name: str  # the key of the family's record in contract/families.py
    denoiser_key: str  # the pipeline component trained: "unet" or "transformer"
    is_flow = False  # rectified flow (sigma in [0, 1]) rather than a DDPM noise schedule
    # The tokenizers and text encoders that read a caption, and the VAE: pipeline component (its subfolder
    # and the attribute it is loaded as) -> the transformers (diffusers, for the VAE) class that loads it.
    tokenizer_classes: dict[str, str] = {}
    text_encoder_classes: dict[str, str] = {}
    vae_class = "AutoencoderKL"
    vae_in_full_precision = False  # encode in fp32 whatever the training precision (SDXL's VAE overflows in fp16)
    # Set by `load_encoders` from the tables above, named as the pipeline's components.
    tokenizer: Any
    tokenizer_2: Any
    tokenizer_3: Any
    tokenizer_4: Any
    text_encoder: Any
    text_encoder_2: Any
    text_encoder_3: Any
    text_encoder_4: Any
    vae: Any
    # Text encoders a LoRA can be trained on (train_text_encoder): pipeline component -> its tokenizer.
    text_encoder_tokenizers: dict[str, str] = {}
    # The denoiser takes the images' original sizes and crops as conditioning (SDXL's micro-conditioning).
    conditions_on_sizes = False
    # Optional pipeline components that neither training nor generation uses (a prompt enhancer): never loaded.
    components_not_loaded: tuple[str, ...] = ()
    # The pipeline's own `load_lora_weights` loads a LoRA or DoRA file (where it cannot, PRX's, peft injects it).
    diffusers_lora_loading = True
    # Module names (peft's suffix match) inside the denoiser's blocks, by `lora_targets` preset.
    lora_targets_attention: tuple[str, ...] = ()
    lora_targets_linear: tuple[str, ...] = ()  # added to the attention ones for "all_linear"
    lora_targets_conv: tuple[str, ...] = ()  # added for "all_linear+conv" (UNets)
    block_prefixes: tuple[str, ...] = ()  # the denoiser's repeated blocks, where adapters go
    # Mixture-of-experts blocks: each expert's token count changes every step (speed.SpeedOptions.static_shapes).
    routed_experts = False

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        self.base_model = base_model
        self.device = device
        self.weight_dtype = weight_dtype
        # This run learns edits from before/after pairs, the sources conditioning the prediction (set per run by
        # the trainer: a family that learns both trains edits when it is given pairs).
        self.uses_pairs = self.facts().needs_pairs

    # -- facts (contract/families.py) --
    @classmethod
    def facts(cls) -> FamilyFacts:
        return family_facts(cls.name)

    @property
    def kohya_prefix(self) -> str | None:
        """The kohya-layout prefix of the denoiser's modules when ComfyUI's loader for the family reads
        another than the component's usual one (`lora_unet_`, `lora_transformer_`: export.KOHYA_PREFIX)."""
        return self.facts().kohya_prefix

    # -- sizes --
    @abstractmethod
    def default_resolution(self) -> int: ...

    @abstractmethod
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE downsampling times the denoiser's own)."""

    @abstractmethod
    def vae_scale(self) -> int:
        """Pixels per latent pixel along a side."""

    # -- adapters --
    def lora_target_pattern(self, preset: str) -> str:
        """A regular expression (peft matches it against whole module names) for the preset's modules."""
        names = list(self.lora_targets_attention)
        if preset in ("all_linear", "all_linear+conv"):
            names += self.lora_targets_linear
        if preset == "all_linear+conv":
            if not self.lora_targets_conv:
                raise EngineError(f"lora_targets all_linear+conv is for UNet models; {self.name} has no convolutions")
            names += self.lora_targets_conv
        elif preset not in ("attention", "all_linear"):
            raise EngineError(f"lora_targets {preset!r} is unknown; choose attention, all_linear or all_linear+conv")
        blocks = "|".join(re.escape(prefix) for prefix in self.block_prefixes)
        modules = "|".join(re.escape(name) for name in names)
        return rf"^(?:{blocks})\.(?:.*\.)?(?:{modules})$"

    def latents_from_pipeline(self, latents: torch.Tensor, pipeline: Any, size: int) -> torch.Tensor:
        """(B, C, H, W) in the denoiser's latent space from what the family's pipeline returns for
        `output_type="latent"` at `size` x `size` pixels: packed tokens for FLUX-style pipelines, a frame
        axis for a video VAE's (Qwen-Image)."""
        if latents.dim() == 3:
            latents = type(pipeline)._unpack_latents(latents, size, size, pipeline.vae_scale_factor)
        if latents.dim() == 5:
            latents = latents.squeeze(2)
        return latents

    @classmethod
    def pipeline_components(cls, base_model: str) -> dict[str, Any]:
        """Components the pipeline's own loading cannot build on these machines, built by the family's loaders
        (`tokenizer_classes` entries naming a class of ours: a Qwen-VL processor without its video part)."""
        return {
            component: load_tokenizer(loader, base_model, component)
            for component, loader in cls.tokenizer_classes.items()
            if "." in loader
        }

    # -- encoders (used once, while caching) --
    def load_encoders(self) -> None:
        """The tokenizers, text encoders and VAE the family declares, from the base model's folders."""
        self.check_components()
        for component, loader in self.tokenizer_classes.items():
            setattr(self, component, load_tokenizer(loader, self.base_model, component))
        encoders = {component: self.load_text_encoder(component) for component in self.text_encoder_classes}
        self.place_text_encoders(encoders)
        for component, encoder in encoders.items():
            setattr(self, component, encoder)
        dtype = torch.float32 if self.vae_in_full_precision else self.weight_dtype
        self.vae = load_vae(self.vae_class, self.base_model, dtype).to(self.device)

    def load_text_encoder(self, component: str) -> torch.nn.Module:
        """One text encoder, in the training precision, in host memory."""
        return load_text_encoder(self.text_encoder_classes[component], self.base_model, component, self.weight_dtype)

    def check_components(self) -> None:
        """Refuse a base model folder that lacks a component the family needs (EngineError saying what to do)."""
        return

    def place_text_encoders(self, encoders: dict[str, torch.nn.Module]) -> None:
        """Bring the loaded text encoders (in host memory) where they run: the device."""
        for encoder in encoders.values():
            encoder.to(self.device)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent distribution (mean, std) for a batch of images in [-1, 1]."""
        # In the VAE's own precision: the training's, or fp32 (`vae_in_full_precision`).
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float().cpu(), dist.std.float().cpu()

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors, first dimension one row per prompt."""

    # The text encoder reads an edit pair's source images with its instruction (Qwen-Image-Edit's VL does): the
    # cache encodes each pair's caption with its sources (`encode_prompts_seeing`), not each caption once.
    captions_see_sources = False

    def encode_prompts_seeing(self, prompts: list[str], sources: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
        """Conditioning tensors for prompts each read with its own images (`captions_see_sources`)."""
        raise EngineError(f"the {self.name} family's text encoder does not read images")

    zeros_for_empty_prompt = False  # the pipeline feeds zeros, not the empty caption's encoding, as "no prompt"

    def unconditional(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the pipeline feeds for "no prompt" (caption dropout trains on it), given the empty
        caption's encoding: that encoding itself unless the pipeline uses zeros instead."""
        if self.zeros_for_empty_prompt:
            return {key: torch.zeros_like(value) for key, value in encoded.items()}
        return encoded

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        """(prompt, its token count, the limit) for each prompt its text encoders would cut."""
        cut = []
        for tokenizer in (getattr(self, "tokenizer", None), getattr(self, "tokenizer_2", None)):
            if tokenizer is None:
                continue
            limit = int(getattr(self, "max_sequence_length", 0)) if "T5" in type(tokenizer).__name__ else 0
            limit = limit or int(tokenizer.model_max_length)
            for prompt in prompts:
                count = len(tokenizer(prompt, truncation=False).input_ids)
                if count > limit:
                    cut.append((prompt, count, limit))
        return cut

    def release_encoders(self) -> None:
        for name in ("vae", *self.tokenizer_classes, *self.text_encoder_classes):
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- training --
    @abstractmethod
    def load_denoiser(self, device: torch.device | None = None) -> torch.nn.Module:
        """The denoiser in the training precision, on `device` (default: the family's)."""

    @abstractmethod
    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents to the denoiser's latent space."""

    @abstractmethod
    def add_noise(
        self,
        latents: torch.Tensor,
        generator: torch.Generator,
        settings: NoiseSettings,
        *,
        levels: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> NoisedBatch:
        """Noise the latents at drawn levels (or the given `levels` in [0, 1], 0 clean, 1 pure noise,
        and the given `noise`: validation uses fixed ones)."""

    @abstractmethod
    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The denoiser's prediction for the noised batch, shaped like `batch.target` (`source_latents`: an edit
        pair's conditioning images, one (B, C, h, w) each, in the denoiser's latent space)."""

    # -- text encoder adapters (families that have `text_encoder_tokenizers`) --
    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        raise EngineError(f"{self.name} cannot train its text encoders")

    def encode_tokens(
        self, ids: dict[str, torch.Tensor], encoders: dict[str, torch.nn.Module]
    ) -> dict[str, torch.Tensor]:
        raise EngineError(f"{self.name} cannot train its text encoders")

    def load_text_encoders(self) -> dict[str, torch.nn.Module]:
        """The text encoders alone, on the device, for training adapters on them."""
        if not self.text_encoder_tokenizers:
            raise EngineError(f"{self.name} cannot train its text encoders")
        return {
            component: self.load_text_encoder(component).to(self.device) for component in self.text_encoder_tokenizers
        }

    # -- generation (the family's pipeline, through generate.run_pipeline) --
    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        """Adjust a pipeline call's `arguments` (and the pipeline) to what the family's pipeline needs: an
        edit model's source image, a pipeline's own size rules. The base families need nothing."""
        return

    @classmethod
    def generation_scope(cls, pipeline: Any, arguments: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        """A context the pipeline call runs in, for a pipeline setting that is not an argument of its call (the
        size Qwen-Image-Edit gives its reference images). The families that need none get a no-op."""
        return contextlib.nullcontext()

    @classmethod
    def guidance_embedding_bypassed(cls, denoiser: torch.nn.Module, *, enabled: bool) -> Any:
        """A context in which the denoiser runs without its guidance embedding (`bypass_guidance_embedding`),
        for the families that have one; a no-op for the others."""
        return contextlib.nullcontext()

    def write_kohya(
        self, diffusers_path: Path, kohya_path: Path, *, alpha: float, metadata: dict[str, str]
    ) -> Path | None:
        """The kohya/ComfyUI copy of the diffusers-layout adapter file, under the names ComfyUI's loader maps for
        the family (None where the adapter cannot be written in them)."""
        from training.engine.export import write_kohya

        return write_kohya(
            diffusers_path, kohya_path, alpha=alpha, metadata=metadata, denoiser_prefix=self.kohya_prefix
        )

    @classmethod
    def kohya_modules(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A kohya-layout file's tensors under one kohya name per diffusers module (the inverse of what
        `write_kohya` fuses or renames for ComfyUI; nothing for most families)."""
        return state

    @abstractmethod
    def save_lora(
        self,
        state_dict: dict[str, torch.Tensor],
        directory: str,
        weight_name: str,
        adapter_metadata: dict[str, Any],
        text_encoders: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    ) -> None: ...


def randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # Drawn where the generator lives: the run's CPU generator on a CPU, a per-step generator on the
    # GPU itself there (a copy from the host each step would make the host wait for the device).
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def vae_config(base_model: str) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    return dict(AutoencoderKL.load_config(base_model, subfolder="vae"))


def load_tokenizer(loader: str, base_model: str, subfolder: str) -> Any:
    """A tokenizer (or processor) of a pipeline component, by its transformers class name or, for a class of
    ours (`vl_processors`), its dotted path."""
    import importlib

    import transformers

    if "." in loader:
        module, _, name = loader.rpartition(".")
        return getattr(importlib.import_module(module), name).from_pretrained(base_model, subfolder=subfolder)
    return getattr(transformers, loader).from_pretrained(base_model, subfolder=subfolder)


def load_text_encoder(loader: str, base_model: str, subfolder: str, dtype: torch.dtype) -> torch.nn.Module:
    """A text encoder of a pipeline component in `dtype`, in host memory, by its transformers class name."""
    import transformers

    model: torch.nn.Module = getattr(transformers, loader).from_pretrained(base_model, subfolder=subfolder, dtype=dtype)
    return model


def load_vae(loader: str, base_model: str, dtype: torch.dtype) -> torch.nn.Module:
    import diffusers

    model: torch.nn.Module = getattr(diffusers, loader).from_pretrained(base_model, subfolder="vae", torch_dtype=dtype)
    return model
