"""Qwen-Image: a 20 B double-stream MMDiT over packed 2x2 latent patches, trained with rectified flow,
conditioned on the last hidden states of Qwen2.5-VL reading the prompt inside the pipeline's system
template (its first `DROP` tokens cut off, padding masked). Its VAE is Wan 2.1's (frames and all): a
latent is normalised per channel with the VAE's `latents_mean` and `latents_std`, not one scaling
factor. The time schedule shifts with the image's token count (the scheduler's exponential shift).
"""

from __future__ import annotations

from typing import Any

import torch

from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flow import JOINT_ATTENTION, FlowFamily


def prompt_template() -> tuple[str, int]:
    """The pipeline's prompt template and how many of its opening tokens (the system prompt, in Qwen's
    vocabulary) it cuts from every encoding. Both are set by QwenImagePipeline's constructor, not class
    attributes, so an empty pipeline is made to read them."""
    from diffusers import QwenImagePipeline

    empty: Any = QwenImagePipeline(None, None, None, None, None)  # no components needed
    return str(empty.prompt_template_encode), int(empty.prompt_template_encode_start_idx)


class QwenVaeLatents(FlowFamily):
    """Latents of Qwen-Image's VAE (Wan 2.1's video VAE, one frame; Qwen-Image and the families built on its
    VAE): normalised per channel with the VAE's `latents_mean` and `latents_std`, not one scaling factor."""

    vae_class = "AutoencoderKLQwenImage"

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        mean = self.vae_config.get("latents_mean") or [0.0] * int(self.vae_config["z_dim"])
        std = self.vae_config.get("latents_std") or [1.0] * int(self.vae_config["z_dim"])
        self.latents_mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.latents_std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The video VAE takes (B, C, frames, H, W); one frame.
        frames = pixels.to(self.device, self.weight_dtype).unsqueeze(2)
        dist = self.vae.encode(frames).latent_dist
        return dist.mean.squeeze(2).float().cpu(), dist.std.squeeze(2).float().cpu()

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self.latents_mean.to(latents.device), self.latents_std.to(latents.device)
        return (latents - mean) / std


class QwenImageFamily(QwenVaeLatents):
    name = "qwenimage"
    transformer_class = "QwenImageTransformer2DModel"
    pipeline_class = "QwenImagePipeline"
    block_prefixes = ("transformer_blocks",)
    lora_targets_attention = JOINT_ATTENTION
    # Both streams' MLPs and modulations.
    lora_targets_linear = (
        "img_mlp.net.0.proj",
        "img_mlp.net.2",
        "txt_mlp.net.0.proj",
        "txt_mlp.net.2",
        "img_mod.1",
        "txt_mod.1",
    )
    max_sequence_length = 512  # the pipeline's default
    tokenizer_classes = {"tokenizer": "AutoTokenizer"}
    text_encoder_classes = {"text_encoder": "Qwen2_5_VLForConditionalGeneration"}
    tokenizer_max_length = 1024  # QwenImagePipeline.tokenizer_max_length

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.template, self.caption_offset = prompt_template()

    def caption_texts(self, prompts: list[str]) -> list[str]:
        return [self.template.format(prompt) for prompt in prompts]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            self.caption_texts(prompts),
            max_length=self.tokenizer_max_length + self.caption_offset,
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        hidden = self.text_encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states[-1]
        # Each prompt's own tokens past the template's first DROP, at most max_sequence_length, then
        # right-padded with zeros and masked (as the pipeline pads a batch to its longest prompt).
        width = self.max_sequence_length
        embeds = torch.zeros(len(prompts), width, hidden.shape[-1])
        mask = torch.zeros(len(prompts), width)
        for row in range(len(prompts)):
            own = hidden[row][tokens.attention_mask[row].bool()][self.caption_offset :][:width]
            embeds[row, : own.shape[0]] = own.float().cpu()
            mask[row, : own.shape[0]] = 1.0
        return {"prompt_embeds": embeds, "text_mask": mask}

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
        tokens = QwenImagePipeline._pack_latents(batch.noisy, size, channels, height, width)
        shapes = [(1, height // 2, width // 2)]
        for source in source_latents or []:
            # An edit (Qwen-Image-Edit): each reference image's tokens after the target's, each its own entry of
            # `img_shapes` (its frame index in the rotary positions), as QwenImageEditPlusPipeline feeds them.
            tokens = torch.cat([tokens, QwenImagePipeline._pack_latents(source, size, *source.shape[1:])], dim=1)
            shapes.append((1, source.shape[-2] // 2, source.shape[-1] // 2))
        mask = conditioning["text_mask"].to(self.device)
        length = max(int(mask.sum(dim=1).max()), 1)  # the batch's longest caption, as the pipeline pads
        prediction = denoiser(
            hidden_states=tokens.to(self.weight_dtype),
            timestep=batch.timesteps.to(self.weight_dtype),
            encoder_hidden_states=conditioning["prompt_embeds"][:, :length].to(self.device, self.weight_dtype),
            encoder_hidden_states_mask=mask[:, :length].long(),
            img_shapes=[shapes] * size,
            return_dict=False,
        )[0]
        prediction = prediction[:, : (height // 2) * (width // 2)]  # the target's tokens (the pipeline's slice)
        scale = self.vae_scale()
        return QwenImagePipeline._unpack_latents(prediction, height * scale, width * scale, scale).squeeze(2)
