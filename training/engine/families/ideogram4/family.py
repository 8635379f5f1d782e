"""Ideogram 4 (Ideogram, 9.3 B; non-commercial licence): a rectified-flow DiT over FLUX.2's VAE, run as one
packed sequence `[left padding][caption][image]`: the caption's tokens (their features at the image tokens'
places, zeros elsewhere) and the image's 2x2 patch tokens pass its 34 layers together, padding in a segment of
its own. The model's time runs the other way (1 - sigma: 1 is the clean image) and it predicts
`latents - noise`; `Ideogram4Pipeline` flips both, and so does `predict`.

The caption is what `Ideogram4Pipeline.encode_prompt` builds, run here on this family's tokenizer and encoder:
the prompt as the single user turn of Qwen3-VL's chat template, read by Qwen3-VL-8B, whose outputs after 13 of
its decoder layers are interleaved per token (53,248 features a token). Each caption is cached at its own length
(the pipeline's left padding only adds a segment the image never attends to), and `predict` rebuilds the packed
layout, positions, segments and role indicators with the pipeline's own `_prepare_ids`.

Latents are FLUX.2's VAE's, but folded into tokens in Ideogram's order, (row, column, channel) within a 2x2
patch, and normalised there with the VAE's BatchNorm statistics. Training draws sigmas as the model was trained:
logit-normal, shifted with the image's size (the pipeline's resolution-aware mean, 0.5 * log(area / 512²), is a
timestep shift of sqrt(area) / 512); its logit standard deviation was 1.5 (`logit_std`).

What a LoRA adapts: the conditional `transformer` only (as diffusers' and ai-toolkit's trainers do). The pipeline
guides with a second, separately trained `unconditional_transformer` that sees the image alone
(`v = g * conditional + (1 - g) * unconditional`, g 7 then 3). Left as it is, it would keep the base model's
prediction while the adapter moves the conditional one, and the guidance would multiply the adapter's change by g
(generations overshot the data: measured on the tiny model, 2.2 -> 6.9 from the data at the published guidance,
against 2.2 -> 1.2 with the conditional model alone). So generation with an adapter shifts the unconditional
prediction by the adapter's change to the conditional one (`share_adapter_shift`), the change a classifier-free
guided model gets in both branches: one more forward of the conditional model, adapters off, per step. The
prompt enhancer head is never loaded. ComfyUI reads Ideogram 4's attention as one
fused q|k|v weight under its original names: the kohya file fuses each layer's q, k and v adapters into one
(exact for LoRA and DoRA; LoKr and LoHa cannot be fused, so no kohya file is written for them)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.engine.errors import EngineError
from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flux2.family import Flux2VaeLatents

if TYPE_CHECKING:
    from PIL import Image

PATCH = 2
BASE_PIXELS = 512 * 512  # the area at which the pipeline's resolution-aware schedule mean is its base mean
MAX_CAPTION_TOKENS = 2048  # Ideogram4Pipeline's max_sequence_length


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C), each token's values in Ideogram's (row, column, channel) order."""
    size, channels, height, width = latents.shape
    folded = latents.view(size, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    return folded.permute(0, 2, 4, 3, 5, 1).reshape(size, (height // PATCH) * (width // PATCH), channels * PATCH**2)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack`, as the pipeline unfolds its tokens before decoding: (B, tokens, 4C) -> (B, C, H, W)."""
    size, _, features = tokens.shape
    channels = features // PATCH**2
    grid = tokens.view(size, height // PATCH, width // PATCH, PATCH, PATCH, channels)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(size, channels, height, width)


class Ideogram4Family(Flux2VaeLatents):
    name = "ideogram4"
    transformer_class = "Ideogram4Transformer2DModel"
    pipeline_class = "Ideogram4Pipeline"
    block_prefixes = ("layers",)
    lora_targets_attention = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
    # Each layer's SwiGLU and its modulation.
    lora_targets_linear = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaln_modulation")
    tokenizer_classes = {"tokenizer": "AutoTokenizer"}
    text_encoder_classes = {"text_encoder": "Qwen3VLModel"}
    components_not_loaded = ("prompt_enhancer_head",)
    max_sequence_length = MAX_CAPTION_TOKENS

    def text_pipeline(self) -> Any:
        """An Ideogram4Pipeline holding only this family's tokenizer and text encoder: its own prompt code runs."""
        from diffusers import Ideogram4Pipeline

        pipeline: Any = Ideogram4Pipeline(
            scheduler=None,
            vae=None,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            transformer=None,
            unconditional_transformer=None,
        )
        return pipeline

    def caption_lengths(self, prompts: list[str]) -> list[int]:
        """Each prompt's token count in the chat format the pipeline wraps it in."""
        return [caption_length(self.tokenizer, prompt) for prompt in prompts]

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        # The pipeline refuses a longer caption; training cuts it and says so.
        limit = self.max_sequence_length
        return [(p, n, limit) for p, n in zip(prompts, self.caption_lengths(prompts), strict=True) if n > limit]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        cut = [cut_caption(self.tokenizer, prompt, self.max_sequence_length) for prompt in prompts]
        lengths = self.caption_lengths(cut)
        longest = max(lengths)
        # The pipeline's encoder on the chunk, left-padded to its longest caption, with the image grid 1 x 1 (the
        # image's place in the packed layout is rebuilt per batch by `predict`).
        features, _, _, _ = self.text_pipeline().encode_prompt(cut, 1, 1, longest, self.device)
        # Each caption moved to the front, at its own length: (prompts, longest, features), with a mask.
        embeds = torch.zeros(len(prompts), longest, features.shape[-1], dtype=self.weight_dtype)
        mask = torch.zeros(len(prompts), longest)
        for row, length in enumerate(lengths):
            embeds[row, :length] = features[row, longest - length : longest].to(self.weight_dtype).cpu()
            mask[row, :length] = 1.0
        return {"prompt_embeds": embeds, "text_mask": mask}

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised with the BatchNorm statistics in Ideogram's token order, the layout kept as the VAE's."""
        mean = self.latents_mean.to(latents.device).view(1, 1, -1)
        std = self.latents_std.to(latents.device).view(1, 1, -1)
        height, width = latents.shape[-2:]
        return unpack((pack(latents) - mean) / std, height, width)

    def latents_from_pipeline(self, latents: torch.Tensor, pipeline: Any, size: int) -> torch.Tensor:
        """Ideogram4Pipeline returns its normalised tokens."""
        side = size // self.vae_scale()
        return unpack(latents, side, side)

    def timestep_shift(self, settings: NoiseSettings, latent_height: int, latent_width: int) -> float:
        """The user's value, or the pipeline's resolution-aware schedule mean as a shift: adding
        0.5 * log(area / 512²) to the logit of a sigma shifts it by sqrt(area) / 512."""
        if settings.timestep_shift is not None:
            return float(settings.timestep_shift)
        area = latent_height * latent_width * self.vae_scale() ** 2
        return math.sqrt(area / BASE_PIXELS)

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers import Ideogram4Pipeline

        size, _, height, width = batch.noisy.shape
        tokens = pack(batch.noisy)
        mask = conditioning["text_mask"].to(self.device).bool()
        lengths = [max(int(length), 1) for length in mask.sum(dim=1).tolist()]
        region = max(lengths)  # the batch's longest caption: the packed layout's text region
        features = conditioning["prompt_embeds"].to(self.device, self.weight_dtype)
        embeds = torch.zeros(
            size, region + tokens.shape[1], features.shape[-1], device=self.device, dtype=self.weight_dtype
        )
        for row, length in enumerate(lengths):
            embeds[row, region - length : region] = features[row, :length]  # left-padded, as the pipeline packs it
        position_ids, segment_ids, indicator = Ideogram4Pipeline._prepare_ids(
            lengths, height // PATCH, width // PATCH, region, self.device
        )
        hidden = torch.cat([tokens.new_zeros(size, region, tokens.shape[-1]), tokens], dim=1)
        output = denoiser(
            hidden_states=hidden.to(self.weight_dtype),
            timestep=(1.0 - batch.timesteps).to(self.weight_dtype),
            encoder_hidden_states=embeds,
            position_ids=position_ids,
            segment_ids=segment_ids,
            indicator=indicator,
            return_dict=False,
        )[0]
        return -unpack(output[:, region:], height, width)

    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        """Ideogram4Pipeline takes no negative prompt (its guidance is the unconditional model), guides with a
        schedule as long as the run (the published 7 then 3 for the last sixteenth of the steps, unless a
        `guidance_scale` is given), and reads the caption at its own length (the left padding to 2048 tokens
        adds a segment the image never attends to)."""
        if arguments.pop("negative_prompt", None):
            raise EngineError("Ideogram 4 takes no negative prompt: its guidance is a separate unconditional model")
        steps = int(arguments["num_inference_steps"])
        if arguments.get("guidance_scale") is None:
            arguments.pop("guidance_scale", None)
            final = max(1, round(steps / 16))
            arguments["guidance_schedule"] = [7.0] * (steps - final) + [3.0] * final
        else:
            arguments["guidance_schedule"] = None
        length = caption_length(pipeline.tokenizer, arguments["prompt"])
        if length > MAX_CAPTION_TOKENS:
            raise EngineError(f"the prompt is {length} tokens; Ideogram 4 reads at most {MAX_CAPTION_TOKENS}")
        arguments["max_sequence_length"] = length
        share_adapter_shift(pipeline)

    def write_kohya(
        self, diffusers_path: Path, kohya_path: Path, *, alpha: float, metadata: dict[str, str]
    ) -> Path | None:
        """ComfyUI's Ideogram 4 model has the original names and one fused q|k|v weight per layer; its loader maps
        `lora_unet_<name>` over them. Each layer's q, k and v adapters are fused into one: the down weights stacked,
        the up weights block-diagonal and the alpha tripled (the fused rank is three times each), which is the same
        update; DoRA's magnitudes, per output row, stack too. LoKr and LoHa have no such fusion: None."""
        from safetensors.torch import load_file, save_file

        from training.engine.export import to_kohya
        from training.engine.families.ideogram4.comfyui import fuse_attention

        state = load_file(str(diffusers_path))
        if metadata.get("lora_type") not in ("lora", "dora"):
            return None
        kohya = fuse_attention(to_kohya(state, alpha=alpha, denoiser_prefix="lora_unet_"))
        save_file(kohya, str(kohya_path), metadata={**metadata, "format": "pt", "layout": "kohya"})
        return kohya_path

    @classmethod
    def kohya_modules(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from training.engine.families.ideogram4.comfyui import split_attention

        return split_attention(state)


def chat_text(tokenizer: Any, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def caption_length(tokenizer: Any, prompt: str) -> int:
    """The prompt's token count in the chat format Ideogram4Pipeline wraps it in."""
    return len(tokenizer(chat_text(tokenizer, prompt), add_special_tokens=False).input_ids)


def cut_caption(tokenizer: Any, prompt: str, limit: int) -> str:
    """The prompt, cut so that its chat-format encoding fits `limit` tokens (a longer one the pipeline refuses)."""
    if caption_length(tokenizer, prompt) <= limit:
        return prompt
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    overhead = caption_length(tokenizer, "")
    return str(tokenizer.decode(ids[: max(0, limit - overhead)]))


class AdapterShift(torch.nn.Module):
    """The unconditional transformer as the pipeline calls it, its prediction shifted by what the adapters change
    in the conditional one's: u + (c' - c) for the image tokens, c' the conditional prediction the pipeline has
    just made (with the adapters) and c the same call with the adapters off."""

    def __init__(self, unconditional: torch.nn.Module, conditional: ConditionalRecorder) -> None:
        super().__init__()
        self.unconditional = unconditional
        self.conditional = conditional

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unconditional.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unconditional.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from training.engine.adapters import adapters_disabled

        output = self.unconditional(*args, **kwargs)
        recorded, adapted = self.conditional.last
        with adapters_disabled(self.conditional.model):
            plain = self.conditional.model(**recorded)[0]
        images = output[0].shape[1]  # the unconditional call's sequence is the image tokens alone
        shift = (adapted[0] - plain)[:, -images:].to(output[0].dtype)
        return (output[0] + shift, *output[1:])


class ConditionalRecorder(torch.nn.Module):
    """The conditional transformer as the pipeline calls it, keeping its last call's arguments and output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.last: tuple[dict[str, Any], Any] = ({}, None)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, **kwargs: Any) -> Any:
        output = self.model(**kwargs)
        self.last = (kwargs, output)
        return output


def share_adapter_shift(pipeline: Any) -> None:
    """When the pipeline's conditional transformer carries adapters (peft's layers), guide with the unconditional
    prediction shifted by their change (`AdapterShift`); a base model, or a FULL fine-tune, is left as it is."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    transformer = pipeline.transformer
    if isinstance(transformer, ConditionalRecorder):
        return  # already shared
    if not any(isinstance(module, BaseTunerLayer) for module in transformer.modules()):
        return
    recorder = ConditionalRecorder(transformer)
    pipeline.transformer = recorder
    pipeline.unconditional_transformer = AdapterShift(pipeline.unconditional_transformer, recorder)
