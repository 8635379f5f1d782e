"""Krea 2 (Krea 2 Raw, and the few-step distilled Krea 2 Turbo): a 12.8 B single-stream DiT over Qwen-Image's
VAE, trained with rectified flow. The caption's tokens and the image's 2x2 patches form one sequence through
28 blocks (grouped-query attention, a gated attention output, a SwiGLU); one modulation computed from the
timestep is shared by every block, each adding its own table.

The caption is what `Krea2Pipeline.get_text_hidden_states` builds, called here on this family's tokenizer
and encoder: Qwen-Image's system template around the prompt, padded to 512 tokens before the assistant
suffix (whose positions skip the padding), read by Qwen3-VL at 12 depths (`text_encoder_select_layers` in
the pipeline's config) stacked per token, the template's opening cut off, padding masked. The transformer
fuses the 12 depths itself. It is cached as the transformer takes it, (512, 12, 2560) a caption, in the
training precision (31 MB a caption in bf16).

The transformer takes the sigma itself as its timestep and predicts the velocity `noise - latents`. The
shift is the scheduler's resolution-dependent one (its exponential shift over 256 to 6400 tokens, as FLUX's),
or Turbo's fixed mu of 1.15 (`is_distilled` in the pipeline's config)."""

from __future__ import annotations

import math
from typing import Any

import torch

from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.qwenimage.family import QwenVaeLatents

KREA2_ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_gate", "attn.to_out.0")
TURBO_MU = 1.15  # Krea2Pipeline's fixed mu for the distilled checkpoint


class Krea2Family(QwenVaeLatents):
    name = "krea2"
    transformer_class = "Krea2Transformer2DModel"
    pipeline_class = "Krea2Pipeline"
    # The image blocks, and the text-fusion blocks that turn the encoder's 12 depths into caption tokens.
    block_prefixes = ("transformer_blocks", "text_fusion.layerwise_blocks", "text_fusion.refiner_blocks")
    lora_targets_attention = KREA2_ATTENTION
    lora_targets_linear = ("ff.gate", "ff.up", "ff.down")  # each block's SwiGLU
    tokenizer_classes = {"tokenizer": "AutoTokenizer"}
    text_encoder_classes = {"text_encoder": "Qwen3VLModel"}
    max_sequence_length = 512  # the pipeline's default

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        from diffusers import Krea2Pipeline

        index = dict(Krea2Pipeline.load_config(base_model))
        self.select_layers = index.get("text_encoder_select_layers")
        self.distilled = bool(index.get("is_distilled", False))
        self.ids_cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def text_pipeline(self) -> Any:
        """A Krea2Pipeline holding only this family's tokenizer and text encoder: its own prompt code runs."""
        from diffusers import Krea2Pipeline

        pipeline: Any = Krea2Pipeline(
            scheduler=None,
            vae=None,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            transformer=None,
            text_encoder_select_layers=self.select_layers,
        )
        return pipeline

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        pipeline = self.text_pipeline()
        prefix, offset = pipeline.prompt_template_encode_prefix, pipeline.prompt_template_encode_start_idx
        limit = self.max_sequence_length - pipeline.prompt_template_encode_num_suffix_tokens
        counts = [len(self.tokenizer(prefix + prompt).input_ids) - offset for prompt in prompts]
        return [(prompt, count, limit) for prompt, count in zip(prompts, counts, strict=True) if count > limit]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, mask = self.text_pipeline().get_text_hidden_states(prompts, self.max_sequence_length, self.device)
        # Kept in the training precision: 512 tokens x 12 depths x 2560 is 31 MB a caption in bf16.
        return {"prompt_embeds": embeds.to(self.weight_dtype).cpu(), "text_mask": mask.float().cpu()}

    def timestep_shift(self, settings: NoiseSettings, latent_height: int, latent_width: int) -> float:
        """The user's value, Turbo's fixed mu, or the scheduler's resolution-dependent shift."""
        if settings.timestep_shift is None and self.distilled:
            return math.exp(TURBO_MU)
        return super().timestep_shift(settings, latent_height, latent_width)

    def position_ids(self, text_length: int, rows: int, columns: int) -> torch.Tensor:
        """The (text + image, 3) rotary coordinates the pipeline builds, made once per bucket."""
        from diffusers import Krea2Pipeline

        key = (text_length, rows, columns)
        if key not in self.ids_cache:
            self.ids_cache[key] = Krea2Pipeline.prepare_position_ids(text_length, rows, columns, self.device)
        return self.ids_cache[key]

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers import QwenImagePipeline

        size, channels, height, width = batch.noisy.shape
        # The same (channel, row, column) order within a 2x2 patch as Krea2Pipeline._pack_latents.
        tokens = QwenImagePipeline._pack_latents(batch.noisy, size, channels, height, width)
        embeds = conditioning["prompt_embeds"].to(self.device, self.weight_dtype)
        prediction = denoiser(
            hidden_states=tokens.to(self.weight_dtype),
            encoder_hidden_states=embeds,
            timestep=batch.timesteps.to(self.weight_dtype),
            position_ids=self.position_ids(embeds.shape[1], height // 2, width // 2),
            encoder_attention_mask=conditioning["text_mask"].to(self.device).bool(),
            return_dict=False,
        )[0]
        scale = self.vae_scale()
        return QwenImagePipeline._unpack_latents(prediction, height * scale, width * scale, scale).squeeze(2)

    def latents_from_pipeline(self, latents: torch.Tensor, pipeline: Any, size: int) -> torch.Tensor:
        """Krea2Pipeline returns its packed, normalised latent tokens."""
        from diffusers import QwenImagePipeline

        return QwenImagePipeline._unpack_latents(latents, size, size, pipeline.vae_scale_factor).squeeze(2)
