"""FLUX.1: a rectified-flow transformer over packed 2x2 latent patches, with CLIP + T5 conditioning.

FLUX.1-dev also takes a guidance value (its distilled CFG scale); `bypass_guidance_embedding` trains
without it. The Kontext variant learns edits: the source image's latents ride along as extra tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from training.engine.families.base import Family, randn
from training.engine.families.sd import _vae_config


class FluxFamily(Family):
    name = "flux"
    denoiser_key = "transformer"
    lora_target_modules = [
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
    ]
    max_sequence_length = 512

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        from diffusers import FluxTransformer2DModel

        self.vae_config = _vae_config(base_model)
        self.transformer_config = FluxTransformer2DModel.load_config(base_model, subfolder="transformer")
        self.ids_cache: dict[tuple[int, int, bool], torch.Tensor] = {}

    def vae_scale(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    def default_resolution(self) -> int:
        return 1024 if self.vae_scale() == 8 else int(self.vae_config.get("sample_size", 64))

    def size_multiple(self) -> int:
        return self.vae_scale() * 2  # latents are packed in 2x2 patches

    def load_encoders(self) -> None:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self.tokenizer = CLIPTokenizer.from_pretrained(self.base_model, subfolder="tokenizer")
        self.tokenizer_2 = T5TokenizerFast.from_pretrained(self.base_model, subfolder="tokenizer_2")
        self.text_encoder = CLIPTextModel.from_pretrained(
            self.base_model, subfolder="text_encoder", dtype=self.weight_dtype
        ).to(self.device)
        self.text_encoder_2 = T5EncoderModel.from_pretrained(
            self.base_model, subfolder="text_encoder_2", dtype=self.weight_dtype
        ).to(self.device)
        self.vae = AutoencoderKL.from_pretrained(self.base_model, subfolder="vae", torch_dtype=self.weight_dtype).to(
            self.device
        )
        self.encoders_loaded = True

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - float(self.vae_config["shift_factor"])) * float(self.vae_config["scaling_factor"])

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        clip_ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        pooled = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output
        t5_ids = self.tokenizer_2(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        prompt_embeds = self.text_encoder_2(t5_ids, output_hidden_states=False)[0]
        return {"prompt_embeds": prompt_embeds.float().cpu(), "pooled_prompt_embeds": pooled.float().cpu()}

    def load_denoiser(self) -> torch.nn.Module:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel.from_pretrained(
            self.base_model, subfolder="transformer", torch_dtype=self.weight_dtype
        ).to(self.device)

    def loss(
        self,
        denoiser: torch.nn.Module,
        latents: torch.Tensor,
        conditioning: dict[str, torch.Tensor],
        generator: torch.Generator,
        *,
        source_latents: torch.Tensor | None = None,
        options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        from diffusers import FluxPipeline

        options = options or {}
        batch, channels, height, width = latents.shape
        # Noise: a point on the straight path from the image (sigma 0) to pure noise (sigma 1),
        # sigmas drawn logit-normally so the middle of the path, the hardest part, is seen most.
        noise = randn(latents.shape, generator, self.device)
        sigmas = torch.sigmoid(torch.randn((batch,), generator=generator, device=generator.device)).to(self.device)
        noisy = (1.0 - sigmas.view(-1, 1, 1, 1)) * latents + sigmas.view(-1, 1, 1, 1) * noise
        target = noise - latents

        tokens = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        image_ids = self.position_ids(height, width, with_source=source_latents is not None)
        if source_latents is not None:
            source_tokens = FluxPipeline._pack_latents(source_latents, batch, channels, height, width)
            tokens = torch.cat([tokens, source_tokens], dim=1)
        prompt_embeds = conditioning["prompt_embeds"].to(self.device, self.weight_dtype)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=self.weight_dtype)
        guidance = None
        if self.transformer_config.get("guidance_embeds"):
            guidance = torch.full((batch,), float(options.get("guidance_scale", 1.0)), device=self.device)

        # Predict the velocity, and compare with the path's true direction.
        with bypass_guidance(denoiser, enabled=bool(options.get("bypass_guidance_embedding"))):
            prediction = denoiser(
                hidden_states=tokens.to(self.weight_dtype),
                timestep=sigmas.to(self.weight_dtype),
                guidance=guidance,
                pooled_projections=conditioning["pooled_prompt_embeds"].to(self.device, self.weight_dtype),
                encoder_hidden_states=prompt_embeds,
                txt_ids=text_ids,
                img_ids=image_ids,
                return_dict=False,
            )[0]
        prediction = prediction[:, : (height // 2) * (width // 2)]
        scale = self.vae_scale()
        prediction = FluxPipeline._unpack_latents(prediction, height * scale, width * scale, scale)
        return F.mse_loss(prediction.float(), target.float())

    def position_ids(self, height: int, width: int, *, with_source: bool) -> torch.Tensor:
        """The image tokens' rotary position ids, made once per bucket (no copy from the host per step)."""
        from diffusers import FluxPipeline

        key = (height, width, with_source)
        if key not in self.ids_cache:
            ids = FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, self.device, self.weight_dtype)
            if with_source:
                source_ids = ids.clone()
                source_ids[..., 0] = 1  # Kontext marks conditioning tokens in the first id axis
                ids = torch.cat([ids, source_ids], dim=0)
            self.ids_cache[key] = ids
        return self.ids_cache[key]

    def save_lora(
        self, state_dict: dict[str, torch.Tensor], directory: str, weight_name: str, adapter_metadata: dict[str, Any]
    ) -> None:
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(
            directory,
            transformer_lora_layers=state_dict,
            weight_name=weight_name,
            transformer_lora_adapter_metadata=adapter_metadata,
        )


class FluxKontextFamily(FluxFamily):
    name = "flux-kontext"
    uses_pairs = True


@contextlib.contextmanager
def bypass_guidance(transformer: torch.nn.Module, *, enabled: bool) -> Iterator[None]:
    """Run the transformer with its guidance embedding left out of the conditioning vector."""
    embed = getattr(transformer, "time_text_embed", None)
    if not enabled or embed is None or not hasattr(embed, "guidance_embedder"):
        yield
        return

    def without_guidance(
        timestep: torch.Tensor, guidance: torch.Tensor, pooled_projection: torch.Tensor
    ) -> torch.Tensor:
        projected = embed.time_proj(timestep)
        return embed.timestep_embedder(projected.to(dtype=pooled_projection.dtype)) + embed.text_embedder(
            pooled_projection
        )

    embed.forward = without_guidance
    try:
        yield
    finally:
        del embed.forward  # back to the class's own forward
