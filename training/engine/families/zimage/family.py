"""Z-Image (Tongyi-MAI Z-Image, Z-Image-Turbo): a single-stream DiT trained with rectified flow. The image
tokens (2x2 latent patches) and the caption's tokens each pass refiner layers, then one stack of joint
layers; every layer is modulated by the timestep. The caption is a Qwen3 encoder's second-to-last hidden
states of the prompt in Qwen's chat format, padding dropped.

The transformer's time runs the other way from the scheduler's sigma (1 - sigma: 1 is the clean image)
and it predicts the negated velocity; `ZImagePipeline` flips both, and so does `predict` here, so the
trainer's velocity target (noise - latents) is the same as for the other flow families."""

from __future__ import annotations

import torch

from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flow import FlowFamily, chat_texts


class ZImageFamily(FlowFamily):
    name = "zimage"
    transformer_class = "ZImageTransformer2DModel"
    pipeline_class = "ZImagePipeline"
    block_prefixes = ("layers", "noise_refiner", "context_refiner")
    lora_targets_attention = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
    # The SwiGLU feed-forward and the per-layer timestep modulation (the context refiner has none).
    lora_targets_linear = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0")
    max_sequence_length = 512  # the pipeline's default
    tokenizer_classes = {"tokenizer": "AutoTokenizer"}
    text_encoder_classes = {"text_encoder": "AutoModel"}

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.patch_size = int(next(iter(self.transformer_config.get("all_patch_size", (2,)))))

    def caption_texts(self, prompts: list[str]) -> list[str]:
        """Each prompt in Qwen's chat format, as the pipeline feeds it to the encoder."""
        return chat_texts(self.tokenizer, prompts, thinking=True)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            self.caption_texts(prompts),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device).bool()
        output = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True)
        # Cached at full length with the mask; `predict` keeps each caption's own tokens, as the pipeline.
        return {"prompt_embeds": output.hidden_states[-2].float().cpu(), "text_mask": mask.float().cpu()}

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        embeds = conditioning["prompt_embeds"].to(self.device, self.weight_dtype)
        masks = conditioning["text_mask"].to(self.device).bool()
        captions = [embeds[row][masks[row]] for row in range(embeds.shape[0])]
        images = list(batch.noisy.to(self.weight_dtype).unsqueeze(2).unbind(0))  # (C, frames=1, H, W) each
        output = denoiser(images, (1.0 - batch.timesteps).to(self.weight_dtype), captions, return_dict=False)[0]
        return -torch.stack(output).squeeze(2)
