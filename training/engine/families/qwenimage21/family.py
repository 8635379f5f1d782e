"""Qwen-Image 2.1 (`QwenImage21Pipeline`): a 7 B single-stream transformer over the latents of a 16x RGBA VAE
(64 channels, one token per 16x16 tile, normalised per channel), trained with rectified flow, conditioned on
Qwen3-VL's last decoder layer before its final norm reading the prompt in the pipeline's template.

The prompt is encoded by the pipeline's own `_get_qwen_prompt_embeds` (on an empty pipeline holding this
family's processor and encoder), so training reads exactly what generation feeds: its template, the empty
prompt read as " ", left padding, the final norm bypassed, the system tokens cut. In the transformer the text
and the image share one sequence: each of the VL sequence's image slots stands for a 2x2 group of latent
tokens, the target's slots follow the text, attention is block-causal and the text is modulated as at time 0
(`causal_condition`); the prediction is read on the sequence's last, the target's, tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.qwenimage.family import QwenVaeLatents

PROCESSOR = "training.engine.vl_processors.Qwen3VLProcessorWithoutVideo"
SLOT = 2  # a VL image slot covers 2x2 latent tokens (the transformer's _IMG_TOKENS_PER_SLOT = 4)


class QwenImage21Family(QwenVaeLatents):
    name = "qwenimage21"
    transformer_class = "QwenImage21Transformer2DModel"
    pipeline_class = "QwenImage21Pipeline"
    vae_class = "AutoencoderKLQwenImage21"
    patch_size = 1  # latents enter unpatched: one token per latent pixel
    block_prefixes = ("transformer_blocks",)
    lora_targets_attention = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")
    lora_targets_linear = ("img_mlp.gate_layer", "img_mlp.proj", "img_mlp.out")  # the shared SwiGLU
    tokenizer_classes = {"processor": PROCESSOR}  # the pipeline has no tokenizer of its own
    text_encoder_classes = {"text_encoder": "Qwen3VLForConditionalGeneration"}
    processor: Any

    def size_multiple(self) -> int:
        return self.vae_scale() * SLOT  # whole 2x2 slots of 16 px tokens: 32 px, as the pipeline rounds

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        return []  # the pipeline reads a prompt whole: nothing is cut

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The VAE reads RGBA: an opaque alpha channel, as the pipeline's RGBA conversion gives an RGB image.
        opaque = torch.ones_like(pixels[:, :1])
        return super().encode_pixels(torch.cat([pixels, opaque], dim=1))

    def text_pipeline(self) -> Any:
        """An empty QwenImage21Pipeline holding the processor and text encoder: its prompt encoding is ours."""
        from diffusers import QwenImage21Pipeline

        return QwenImage21Pipeline(
            scheduler=None, vae=None, text_encoder=self.text_encoder, processor=self.processor, transformer=None
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, mask, _ = self.text_pipeline()._get_qwen_prompt_embeds(prompts, None, self.device)
        return {"prompt_embeds": embeds.float().cpu(), "text_mask": mask.float().cpu()}

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        size, channels, height, width = batch.noisy.shape
        tokens = batch.noisy.flatten(2).transpose(1, 2)  # the pipeline's _pack_latents: one token per pixel
        mask = conditioning["text_mask"].to(self.device)
        length = max(int(mask.sum(dim=1).max()), 1)  # the batch's longest caption (right-padded, masked)
        slots = torch.cat(
            [
                torch.zeros(size, length, dtype=torch.bool, device=self.device),
                torch.ones(size, height * width // (SLOT * SLOT), dtype=torch.bool, device=self.device),
            ],
            dim=1,
        )
        prediction = denoiser(
            hidden_states=tokens.to(self.weight_dtype),
            encoder_hidden_states=conditioning["prompt_embeds"][:, :length].to(self.device, self.weight_dtype),
            encoder_hidden_states_mask=mask[:, :length].bool(),
            timestep=batch.timesteps.to(self.weight_dtype),
            img_shapes=[[(1, height, width)]] * size,
            img_mask=slots,
            return_dict=False,
        )[0]
        target = prediction[:, -height * width :]  # the joint sequence ends with the target's tokens
        return target.transpose(1, 2).reshape(size, channels, height, width)

    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        """The published schedule (`sample_sigmas`, whose length would set the steps whatever was asked) resampled
        to the steps asked for; the guidance scale as the pipeline's `true_cfg_scale` (it guides only with a
        negative prompt: the model is made to sample without guidance)."""
        if "guidance_scale" in arguments:
            arguments["true_cfg_scale"] = arguments.pop("guidance_scale")
        published = pipeline.config.get("sample_sigmas")
        steps = int(arguments["num_inference_steps"])
        if published and len(published) != steps:
            positions = np.linspace(0.0, 1.0, steps)
            arguments["sigmas"] = list(np.interp(positions, np.linspace(0.0, 1.0, len(published)), published))
        if image is not None:
            arguments["image"] = image
