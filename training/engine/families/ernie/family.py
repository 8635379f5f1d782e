"""ERNIE-Image (Baidu; ERNIE-Image and -Turbo): an 8 B single-stream DiT over FLUX.2's VAE, trained with
rectified flow. Image patches and the caption's tokens share every layer's joint attention; one modulation,
computed from the timestep, is shared by all 36 layers.

The caption is what `ErnieImagePipeline.encode_prompt` builds: Ministral 3 (a `Mistral3Model`) reads the
prompt as it is (no chat template, no system prompt), one prompt at a time, and its second-to-last hidden
states are the caption's tokens, as many as the prompt has. The transformer masks each caption past its
own length and places the image's positions after it (`text_lens`), so each caption is cached at its own
length, zero-padded, with a mask. The pipeline's prompt enhancer (`pe`, a second Ministral 3) rewrites
prompts before generation; training does not need it, and generation here uses the prompt as written.

Latents are FLUX.2's (32 channels, folded into 128-channel 2x2 patches and normalised with the VAE's
BatchNorm statistics, with the 1e-5 epsilon the pipeline decodes with); the transformer takes the folded
patches as a (B, 128, H/16, W/16) image, its timestep in the scheduler's units (sigma x 1000), and predicts
the velocity `noise - latents`. The schedule has a fixed shift (4.0)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flux2.family import Flux2VaeLatents, patchify, unpatchify

if TYPE_CHECKING:
    from PIL import Image


class ErnieImageFamily(Flux2VaeLatents):
    name = "ernie-image"
    transformer_class = "ErnieImageTransformer2DModel"
    pipeline_class = "ErnieImagePipeline"
    block_prefixes = ("layers",)
    lora_targets_attention = (
        "self_attention.to_q",
        "self_attention.to_k",
        "self_attention.to_v",
        "self_attention.to_out.0",
    )
    lora_targets_linear = ("mlp.gate_proj", "mlp.up_proj", "mlp.linear_fc2")  # each layer's GELU-gated MLP
    tokenizer_classes = {"tokenizer": "AutoTokenizer"}
    text_encoder_classes = {"text_encoder": "Mistral3Model"}
    batch_norm_eps = 1e-5  # what ErnieImagePipeline decodes with, whatever the VAE's config says
    components_not_loaded = ("pe", "pe_tokenizer")  # the prompt enhancer
    # The pipeline reads a prompt whole (up to the tokenizer's own limit); training keeps 512 tokens and says
    # which captions are longer.
    max_sequence_length = 512

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        limit = self.max_sequence_length
        counts = [len(self.tokenizer(prompt, add_special_tokens=True).input_ids) for prompt in prompts]
        return [(prompt, count, limit) for prompt, count in zip(prompts, counts, strict=True) if count > limit]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        from diffusers import ErnieImagePipeline

        # The pipeline's own encoder, called on this family's tokenizer and text encoder.
        hidden = ErnieImagePipeline.encode_prompt(self, prompts, self.device)
        width = self.max_sequence_length
        embeds = torch.zeros(len(prompts), width, hidden[0].shape[-1])
        mask = torch.zeros(len(prompts), width)
        for row, tokens in enumerate(hidden):
            own = tokens[:width].float().cpu()
            embeds[row, : own.shape[0]] = own
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
        lengths = conditioning["text_mask"].to(self.device).bool().sum(dim=1)
        longest = max(int(lengths.max()), 1)  # the batch's longest caption, as the pipeline pads a batch
        steps = float(self.scheduler_config.get("num_train_timesteps", 1000))
        prediction = denoiser(
            hidden_states=patchify(batch.noisy).to(self.weight_dtype),
            timestep=(batch.timesteps * steps).to(self.weight_dtype),
            text_bth=conditioning["prompt_embeds"][:, :longest].to(self.device, self.weight_dtype),
            text_lens=lengths,
            return_dict=False,
        )[0]
        return unpatchify(prediction)

    def latents_from_pipeline(self, latents: torch.Tensor, pipeline: Any, size: int) -> torch.Tensor:
        """ErnieImagePipeline returns its normalised 128-channel patches."""
        return unpatchify(latents)

    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        arguments["use_pe"] = False  # the prompt as written (no enhancer is loaded)
