"""FLUX.1: a rectified-flow transformer over packed 2x2 latent patches, with CLIP + T5 conditioning.

FLUX.1-dev also takes a guidance value (its distilled CFG scale); `bypass_guidance_embedding` trains
without it. The Kontext variant learns edits: the source image's latents ride along as extra tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from training.engine.errors import EngineError
from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flow import JOINT_ATTENTION, FlowFamily

if TYPE_CHECKING:
    from PIL import Image


class FluxFamily(FlowFamily):
    name = "flux"
    transformer_class = "FluxTransformer2DModel"
    pipeline_class = "FluxPipeline"
    caption_tokenizer = "tokenizer_2"  # T5 carries the caption; CLIP gives the pooled vector
    tokenizer_classes = {"tokenizer": "CLIPTokenizer", "tokenizer_2": "T5Tokenizer"}
    text_encoder_classes = {"text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel"}
    block_prefixes = ("transformer_blocks", "single_transformer_blocks")
    lora_targets_attention = JOINT_ATTENTION
    # Every other linear of the blocks: feed-forward, the single blocks' fused MLP and output, and
    # the modulation (AdaLN) projections of both kinds of block.
    lora_targets_linear = (
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
        "norm1.linear",
        "norm1_context.linear",
        "norm.linear",
        "proj_mlp",
        "proj_out",
    )

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.ids_cache: dict[tuple[int, int, bool], torch.Tensor] = {}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        # CLIP gives the pooled vector from its first 77 tokens, as the pipeline does; T5 reads up to 512.
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
        image_ids = self.position_ids(height, width, with_source=source_latents is not None)
        if source_latents is not None:
            # Kontext conditions on one image (FluxKontextPipeline takes one).
            source_tokens = FluxPipeline._pack_latents(source_latents[0], size, channels, height, width)
            tokens = torch.cat([tokens, source_tokens], dim=1)
        prompt_embeds = conditioning["prompt_embeds"].to(self.device, self.weight_dtype)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=self.weight_dtype)
        guidance = None
        if self.transformer_config.get("guidance_embeds"):
            guidance = torch.full((size,), float(settings.guidance_scale), device=self.device)

        # Predict the velocity along the path.
        with bypass_guidance(denoiser, enabled=settings.bypass_guidance_embedding):
            prediction = denoiser(
                hidden_states=tokens.to(self.weight_dtype),
                timestep=batch.timesteps.to(self.weight_dtype),
                guidance=guidance,
                pooled_projections=conditioning["pooled_prompt_embeds"].to(self.device, self.weight_dtype),
                encoder_hidden_states=prompt_embeds,
                txt_ids=text_ids,
                img_ids=image_ids,
                return_dict=False,
            )[0]
        prediction = prediction[:, : (height // 2) * (width // 2)]
        scale = self.vae_scale()
        return FluxPipeline._unpack_latents(prediction, height * scale, width * scale, scale)

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

    @classmethod
    def guidance_embedding_bypassed(cls, denoiser: torch.nn.Module, *, enabled: bool) -> Any:
        return bypass_guidance(denoiser, enabled=enabled)


class FluxKontextFamily(FluxFamily):
    """FLUX.1 Kontext: an edit model (its facts record says it trains pairs)."""

    name = "flux-kontext"

    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        if isinstance(image, list):
            image = image[0] if image else None  # FluxKontextPipeline edits one image
        if image is None:
            raise EngineError("an edit (Kontext) model needs an input image to generate from")
        arguments.update(image=image, _auto_resize=False, max_area=arguments["width"] * arguments["height"])


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
