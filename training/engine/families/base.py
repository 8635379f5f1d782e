"""What every family adapter provides to the generic training loop."""

from __future__ import annotations

import gc
from abc import ABC, abstractmethod
from typing import Any

import torch


class Family(ABC):
    name: str
    denoiser_key: str  # the pipeline component trained: "unet" or "transformer"
    lora_target_modules: list[str]
    uses_pairs = False

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        self.base_model = base_model
        self.device = device
        self.weight_dtype = weight_dtype
        self.encoders_loaded = False

    # -- sizes --
    @abstractmethod
    def default_resolution(self) -> int: ...

    @abstractmethod
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE downsampling times the denoiser's own)."""

    # -- encoders (used once, while caching) --
    @abstractmethod
    def load_encoders(self) -> None: ...

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent distribution (mean, std) for a batch of images in [-1, 1]."""
        dist = self.vae.encode(pixels.to(self.device, self.weight_dtype)).latent_dist  # type: ignore[attr-defined]
        return dist.mean.float().cpu(), dist.std.float().cpu()

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors, first dimension one row per prompt."""

    def release_encoders(self) -> None:
        for name in self.encoder_attributes():
            if hasattr(self, name):
                delattr(self, name)
        self.encoders_loaded = False
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def encoder_attributes(self) -> list[str]:
        return ["vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]

    # -- training --
    @abstractmethod
    def load_denoiser(self) -> torch.nn.Module: ...

    @abstractmethod
    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents to the denoiser's latent space."""

    @abstractmethod
    def loss(
        self,
        denoiser: torch.nn.Module,
        latents: torch.Tensor,
        conditioning: dict[str, torch.Tensor],
        generator: torch.Generator,
        *,
        source_latents: torch.Tensor | None = None,
        options: dict[str, Any] | None = None,
    ) -> torch.Tensor: ...

    @abstractmethod
    def save_lora(
        self, state_dict: dict[str, torch.Tensor], directory: str, weight_name: str, adapter_metadata: dict[str, Any]
    ) -> None: ...


def randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # Drawn where the generator lives: the run's CPU generator on a CPU, a per-step generator on the
    # GPU itself there (a copy from the host each step would make the host wait for the device).
    return torch.randn(shape, generator=generator, device=generator.device).to(device)
