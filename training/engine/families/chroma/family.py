"""Chroma: FLUX.1-schnell's layout (packed 2x2 latent patches, double and single blocks, rectified flow)
with T5 as its only text encoder, no pooled vector and no guidance input: a small network (the
"distilled guidance layer") computes every block's modulation from the timestep alone, so the blocks
have no modulation linears of their own.

As `ChromaPipeline` does, T5 encodes with its attention mask, and the transformer sees the caption's
tokens and the first padding token only (the rest are masked out of the joint attention)."""

from __future__ import annotations

import torch

from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flux.family import FluxFamily


class ChromaFamily(FluxFamily):
    name = "chroma"
    transformer_class = "ChromaTransformer2DModel"
    pipeline_class = "ChromaPipeline"
    caption_tokenizer = "tokenizer"
    tokenizer_classes = {"tokenizer": "T5Tokenizer"}
    text_encoder_classes = {"text_encoder": "T5EncoderModel"}

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

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
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
