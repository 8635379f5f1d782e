"""Chroma: FLUX.1-schnell's layout (packed 2x2 latent patches, double and single blocks, rectified flow)
with T5 as its only text encoder, no pooled vector and no guidance input: a small network (the
"distilled guidance layer") computes every block's modulation from the timestep alone, so the blocks
have no modulation linears of their own.

As `ChromaPipeline` does, T5 encodes with its attention mask, and the transformer sees the caption's
tokens and the first padding token only (the rest are masked out of the joint attention)."""

from __future__ import annotations

from typing import Any

import torch

from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flux import FluxFamily


class ChromaFamily(FluxFamily):
    name = "chroma"

    def load_config(self) -> dict[str, Any]:
        from diffusers import ChromaTransformer2DModel

        return dict(ChromaTransformer2DModel.load_config(self.base_model, subfolder="transformer"))

    def load_encoders(self) -> None:
        from diffusers import AutoencoderKL
        from transformers import T5EncoderModel, T5Tokenizer

        self.tokenizer = T5Tokenizer.from_pretrained(self.base_model, subfolder="tokenizer")
        self.text_encoder = T5EncoderModel.from_pretrained(
            self.base_model, subfolder="text_encoder", dtype=self.weight_dtype
        ).to(self.device)  # type: ignore[arg-type]  # transformers' functools.wraps on PreTrainedModel.to() loses the method binding
        self.vae = AutoencoderKL.from_pretrained(self.base_model, subfolder="vae", torch_dtype=self.weight_dtype).to(
            self.device
        )
        self.encoders_loaded = True

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        )
        mask = tokens.attention_mask.to(self.device)
        prompt_embeds = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        # The caption's tokens and the first padding token stay visible; the other padding is masked.
        positions = torch.arange(mask.shape[1], device=self.device).unsqueeze(0)
        visible = positions <= mask.sum(dim=1, keepdim=True)
        return {"prompt_embeds": prompt_embeds.float().cpu(), "text_mask": visible.float().cpu()}

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        limit = self.max_sequence_length
        counts = [len(self.tokenizer(prompt, truncation=False).input_ids) for prompt in prompts]
        return [(prompt, n, limit) for prompt, n in zip(prompts, counts, strict=True) if n > limit]

    def load_denoiser(self) -> torch.nn.Module:
        from diffusers import ChromaTransformer2DModel

        return ChromaTransformer2DModel.from_pretrained(
            self.base_model, subfolder="transformer", torch_dtype=self.weight_dtype
        ).to(self.device)

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from diffusers import FluxPipeline

        size, channels, height, width = batch.noisy.shape
        tokens = FluxPipeline._pack_latents(batch.noisy, size, channels, height, width)
        prompt_embeds = conditioning["prompt_embeds"].to(self.device, self.weight_dtype)
        text_mask = conditioning["text_mask"].to(self.device).bool()
        attention_mask = torch.cat(
            [text_mask, torch.ones(size, tokens.shape[1], device=self.device, dtype=torch.bool)], dim=1
        )
        prediction = denoiser(
            hidden_states=tokens.to(self.weight_dtype),
            timestep=batch.timesteps.to(self.weight_dtype),
            encoder_hidden_states=prompt_embeds,
            txt_ids=torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=self.weight_dtype),
            img_ids=self.position_ids(height, width, with_source=False),
            attention_mask=attention_mask,
            return_dict=False,
        )[0]
        scale = self.vae_scale()
        return FluxPipeline._unpack_latents(prediction, height * scale, width * scale, scale)

    def save_lora(
        self,
        state_dict: dict[str, torch.Tensor],
        directory: str,
        weight_name: str,
        adapter_metadata: dict[str, Any],
        text_encoders: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    ) -> None:
        from diffusers import ChromaPipeline

        ChromaPipeline.save_lora_weights(
            directory,
            transformer_lora_layers=state_dict,
            weight_name=weight_name,
            transformer_lora_adapter_metadata=adapter_metadata,
        )
