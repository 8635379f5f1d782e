"""Stable Diffusion 3 / 3.5 (medium and large): an MMDiT transformer over 2x2 latent patches, trained
with rectified flow, conditioned on two CLIP encoders and T5.

The conditioning is what `StableDiffusion3Pipeline.encode_prompt` builds: each CLIP encoder's
penultimate hidden states side by side, zero-padded to T5's width and followed by T5's tokens in one
sequence; the pooled vector is both CLIPs' projected outputs side by side. The transformer takes its
timestep in the scheduler's units (sigma x 1000) and patches the latents itself. SD 3.5 medium's
first blocks have a second, image-only attention (`attn2`, "dual attention"); large has none.
"""

from __future__ import annotations

import torch

from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flow import JOINT_ATTENTION, FlowFamily


class SD3Family(FlowFamily):
    name = "sd3"
    transformer_class = "SD3Transformer2DModel"
    pipeline_class = "StableDiffusion3Pipeline"
    caption_tokenizer = "tokenizer_3"  # T5; both CLIPs' 77-token cut is the pipeline's too
    tokenizer_classes = {"tokenizer": "CLIPTokenizer", "tokenizer_2": "CLIPTokenizer", "tokenizer_3": "T5Tokenizer"}
    text_encoder_classes = {
        "text_encoder": "CLIPTextModelWithProjection",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel",
    }
    block_prefixes = ("transformer_blocks",)
    lora_targets_attention = (
        *JOINT_ATTENTION,
        # SD 3.5 medium's dual-attention blocks (absent from large: the pattern then matches nothing more).
        "attn2.to_q",
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
    )
    # Feed-forward of both streams and the AdaLN modulation projections.
    lora_targets_linear = (
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
        "norm1.linear",
        "norm1_context.linear",
    )
    clip_max_length = 77
    max_sequence_length = 256  # the pipeline's default T5 length

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.patch_size = int(self.transformer_config.get("patch_size", 2))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        hidden, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                prompts, padding="max_length", max_length=self.clip_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            output = encoder(ids, output_hidden_states=True)
            pooled.append(output[0])  # the projected pooled output
            hidden.append(output.hidden_states[-2])  # the penultimate layer, as the pipeline (no clip_skip)
        t5_ids = self.tokenizer_3(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        t5 = self.text_encoder_3(t5_ids)[0]
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {
            "prompt_embeds": torch.cat([clip, t5], dim=-2).float().cpu(),
            "pooled_prompt_embeds": torch.cat(pooled, dim=-1).float().cpu(),
        }

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        steps = float(self.scheduler_config.get("num_train_timesteps", 1000))
        return denoiser(
            hidden_states=batch.noisy.to(self.weight_dtype),
            timestep=(batch.timesteps * steps).to(self.weight_dtype),
            encoder_hidden_states=conditioning["prompt_embeds"].to(self.device, self.weight_dtype),
            pooled_projections=conditioning["pooled_prompt_embeds"].to(self.device, self.weight_dtype),
            return_dict=False,
        )[0]
