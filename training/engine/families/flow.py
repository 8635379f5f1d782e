"""Rectified-flow families (FLUX.1, Chroma, SD 3.5, Z-Image, Qwen-Image): a point on the straight path
from the image (sigma 0) to pure noise (sigma 1), with the velocity `noise - latents` as the target.

What differs between them (how latents become tokens, the conditioning, the timestep units the
transformer takes) lives in each family; the sigma draw and the shift, loading the transformer, writing
its LoRA and finding captions its text encoder cuts are here, once."""

from __future__ import annotations

import math
from typing import Any

import torch

from contract.families import native_resolution, vae_downscale
from training.engine.families.base import Family, NoisedBatch, NoiseSettings, randn, vae_config

# A joint-attention (MMDiT) block's projections in diffusers' names: the image stream's q, k, v and output,
# and the caption stream's (FLUX.1, Chroma, SD 3.5, Qwen-Image and FLUX.2 double blocks alike).
JOINT_ATTENTION = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


def chat_texts(tokenizer: Any, prompts: list[str], *, thinking: bool) -> list[str]:
    """Each prompt as the single user turn of the tokenizer's chat template, the assistant's turn opened:
    how the Qwen-encoded pipelines (Z-Image with thinking on, FLUX.2 klein with it off) feed a caption."""
    return [
        str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=thinking,
            )
        )
        for prompt in prompts
    ]


class FlowFamily(Family):
    denoiser_key = "transformer"
    is_flow = True
    patch_size = 2  # latent pixels per token along a side (what the resolution-dependent shift counts)
    # The diffusers classes of the family's transformer and of its pipeline (which writes its LoRA files).
    transformer_class: str
    pipeline_class: str
    # The tokenizer of the text encoder that carries the caption, and how many tokens it reads.
    caption_tokenizer = "tokenizer"
    max_sequence_length = 512
    caption_offset = 0  # opening tokens the pipeline cuts from every encoding

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        import diffusers

        self.vae_config = vae_config(base_model)
        self.scheduler_config = dict(
            diffusers.FlowMatchEulerDiscreteScheduler.load_config(base_model, subfolder="scheduler")
        )
        transformer = getattr(diffusers, self.transformer_class)
        self.transformer_config = dict(transformer.load_config(base_model, subfolder="transformer"))

    def vae_scale(self) -> int:
        return vae_downscale(self.vae_config)

    def default_resolution(self) -> int:
        return native_resolution(self.name, vae_config=self.vae_config, denoiser_config=self.transformer_config)

    def size_multiple(self) -> int:
        return self.vae_scale() * self.patch_size

    def caption_texts(self, prompts: list[str]) -> list[str]:
        """What the caption's text encoder reads for each prompt (a pipeline may wrap it in a template)."""
        return prompts

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        # Only the caption's text encoder counts: a CLIP beside it (FLUX, SD 3.5) cuts at 77 tokens in
        # the pipeline too, which only trims its pooled summary.
        tokenizer = getattr(self, self.caption_tokenizer)
        counts = [
            len(tokenizer(text, truncation=False).input_ids) - self.caption_offset
            for text in self.caption_texts(prompts)
        ]
        limit = self.max_sequence_length
        return [(prompt, n, limit) for prompt, n in zip(prompts, counts, strict=True) if n > limit]

    def load_denoiser(self, device: torch.device | None = None) -> torch.nn.Module:
        import diffusers

        transformer = getattr(diffusers, self.transformer_class)
        return transformer.from_pretrained(self.base_model, subfolder="transformer", torch_dtype=self.weight_dtype).to(
            device or self.device
        )

    def save_lora(
        self,
        state_dict: dict[str, torch.Tensor],
        directory: str,
        weight_name: str,
        adapter_metadata: dict[str, Any],
        text_encoders: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    ) -> None:
        import diffusers

        getattr(diffusers, self.pipeline_class).save_lora_weights(
            directory,
            transformer_lora_layers=state_dict,
            weight_name=weight_name,
            transformer_lora_adapter_metadata=adapter_metadata,
        )

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        shift = self.vae_config.get("shift_factor") or 0.0
        return (latents - float(shift)) * float(self.vae_config["scaling_factor"])

    def timestep_shift(self, settings: NoiseSettings, latent_height: int, latent_width: int) -> float:
        """How far sigmas are pushed towards noise: the user's value, or what the model's own
        scheduler uses at this image size (FLUX: grows with the token count, as in its pipeline; SD 3.5:
        its fixed `shift`)."""
        if settings.timestep_shift is not None:
            return float(settings.timestep_shift)
        config = self.scheduler_config
        if not config.get("use_dynamic_shifting"):
            return float(config.get("shift", 1.0))
        tokens = (latent_height // self.patch_size) * (latent_width // self.patch_size)
        low, high = float(config.get("base_image_seq_len", 256)), float(config.get("max_image_seq_len", 4096))
        base, top = float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15))
        mu = base + (top - base) * (tokens - low) / (high - low)
        return math.exp(mu)

    def sample_sigmas(self, batch: int, generator: torch.Generator, settings: NoiseSettings) -> torch.Tensor:
        shape = (batch,)
        if settings.timestep_sampling == "uniform":
            return torch.rand(shape, generator=generator, device=generator.device)
        if settings.timestep_sampling == "sigmoid":
            return torch.sigmoid(
                settings.sigmoid_scale * torch.randn(shape, generator=generator, device=generator.device)
            )
        # Logit-normal (SD3's default): the middle of the path, the hardest part, is seen most.
        normal = torch.randn(shape, generator=generator, device=generator.device)
        return torch.sigmoid(settings.logit_mean + settings.logit_std * normal)

    def add_noise(
        self,
        latents: torch.Tensor,
        generator: torch.Generator,
        settings: NoiseSettings,
        *,
        levels: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> NoisedBatch:
        # A point on the straight path from the image (sigma 0) to pure noise (sigma 1).
        batch = latents.shape[0]
        if noise is None:
            noise = randn(latents.shape, generator, self.device)
        if levels is None:
            sigmas = self.sample_sigmas(batch, generator, settings).to(self.device)
            shift = self.timestep_shift(settings, latents.shape[-2], latents.shape[-1])
            if shift != 1.0:
                sigmas = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
        else:
            sigmas = levels.to(self.device, torch.float32)
        sigma = sigmas.view(-1, 1, 1, 1)
        noisy = (1.0 - sigma) * latents + sigma * noise
        return NoisedBatch(noisy=noisy, timesteps=sigmas, target=noise - latents)
