"""FLUX.2 (klein 4B / 9B, and dev below): a rectified-flow MMDiT like FLUX.1, rebuilt. Its VAE has 32 latent
channels; the pipeline folds each 2x2 patch of them into one 128-channel token and normalises every
one of those channels with the VAE's own BatchNorm statistics (`vae.bn`). The modulation is shared by
all blocks (three projections at the top of the model instead of one per block), positions are 4-D
(time, row, column, text index), and the transformer takes the sigma itself as its timestep. Training
shifts sigmas as for FLUX.1, by the scheduler's resolution-dependent rule (SimpleTuner's automatic
shift for FLUX.2; the pipeline samples with an empirical fit of the same idea).

The caption of FLUX.2 klein is its Qwen3 encoder's hidden states at three depths (the pipeline's
`text_encoder_out_layers`), stacked side by side, for the prompt in Qwen's chat format padded to 512
tokens; padding is not masked, as in the pipeline.

Latents are kept in the VAE's own 32-channel layout in the trainer (flips, masks and buckets work on
it as for every family) and normalised there: `scale_latents` folds them into patches, normalises and
unfolds them again, which is the pipeline's normalisation with each value in its usual place."""

from __future__ import annotations

import inspect
import math
import re
from typing import TYPE_CHECKING, Any

import torch

from training.engine.errors import EngineError
from training.engine.families.base import Family, NoisedBatch, NoiseSettings
from training.engine.families.flow import JOINT_ATTENTION, FlowFamily, chat_texts

if TYPE_CHECKING:
    from PIL import Image


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), each 2x2 patch's values as four channels (the pipeline's order)."""
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline._patchify_latents(latents)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline._unpatchify_latents(latents)


MIN_REFERENCE_SIDE = 64  # Flux2ImageProcessor.check_image_input's smallest side


def at_least(picture: Image.Image, side: int) -> Image.Image:
    """The image enlarged (aspect kept) so that its shorter side is at least `side`."""
    scale = side / min(picture.size)
    if scale <= 1:
        return picture
    return picture.resize((math.ceil(picture.width * scale), math.ceil(picture.height * scale)))


class Flux2VaeLatents(FlowFamily):
    """Latents of FLUX.2's VAE (FLUX.2, and the families built on its VAE): 32 channels whose 2x2 patches,
    folded into 128 channels, are normalised with the VAE's own BatchNorm statistics. The trainer keeps the
    VAE's 32-channel layout; `scale_latents` folds, normalises and unfolds."""

    vae_class = "AutoencoderKLFlux2"
    # The epsilon added to the statistics' variance: the VAE config's `batch_norm_eps` unless the family's
    # pipeline uses its own.
    batch_norm_eps: float | None = None

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        # The BatchNorm statistics the pipeline normalises latents with, read from the VAE's weights
        # file (two small tensors) rather than by loading the VAE.
        eps = self.batch_norm_eps if self.batch_norm_eps is not None else self.vae_config.get("batch_norm_eps", 1e-4)
        mean, var = self._vae_tensors(("bn.running_mean", "bn.running_var"))
        self.latents_mean = mean.float().view(1, -1, 1, 1)
        self.latents_std = (var.float() + float(eps)).sqrt().view(1, -1, 1, 1)

    def _vae_tensors(self, names: tuple[str, ...]) -> list[torch.Tensor]:
        from pathlib import Path

        from huggingface_hub import hf_hub_download
        from safetensors import safe_open

        local = Path(self.base_model) / "vae"
        if local.is_dir():
            files = sorted(local.glob("*.safetensors"))
        else:
            files = [Path(hf_hub_download(self.base_model, "vae/diffusion_pytorch_model.safetensors"))]
        found: dict[str, torch.Tensor] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                for name in names:
                    if name in handle.keys():  # noqa: SIM118  # a safetensors handle is not a dict
                        found[name] = handle.get_tensor(name)
        missing = [name for name in names if name not in found]
        if missing:
            raise EngineError(f"base model {self.base_model!r}: its VAE weights have no {', '.join(missing)}")
        return [found[name] for name in names]

    def latents_from_pipeline(self, latents: torch.Tensor, pipeline: Any, size: int) -> torch.Tensor:
        """Flux2KleinPipeline returns the VAE's own latents (its normalisation undone)."""
        return self.scale_latents(latents)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self.latents_mean.to(latents.device), self.latents_std.to(latents.device)
        return unpatchify((patchify(latents) - mean) / std)


class Flux2KleinFamily(Flux2VaeLatents):
    name = "flux2-klein"
    transformer_class = "Flux2Transformer2DModel"
    pipeline_class = "Flux2KleinPipeline"
    block_prefixes = ("transformer_blocks", "single_transformer_blocks")
    lora_targets_attention = JOINT_ATTENTION
    # The double blocks' SwiGLU feed-forwards (the modulation is shared, outside the blocks).
    lora_targets_linear = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
    # A single block's two fused projections: q, k, v and the MLP's input; attention and MLP output.
    # Both carry attention, so both are in every preset.
    single_block_targets = ("attn.to_qkv_mlp_proj", "attn.to_out")
    tokenizer_classes = {"tokenizer": "AutoTokenizer"}
    text_encoder_classes = {"text_encoder": "Qwen3ForCausalLM"}

    def lora_target_pattern(self, preset: str) -> str:
        """The double blocks' modules by the usual rule, and a single block's fused projections by their
        own (`attn.to_out` names a ModuleList in a double block and the Linear in a single one)."""
        double = Family.lora_target_pattern(self, preset)
        single = "|".join(re.escape(name) for name in self.single_block_targets)
        return rf"(?:{double})|(?:^single_transformer_blocks\.\d+\.(?:{single})$)"

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.ids_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def text_layers(self) -> tuple[int, ...]:
        """The encoder depths the pipeline stacks (its `text_encoder_out_layers` default)."""
        import diffusers

        call = getattr(diffusers, self.pipeline_class).__call__
        return tuple(inspect.signature(call).parameters["text_encoder_out_layers"].default)

    def caption_texts(self, prompts: list[str]) -> list[str]:
        """Each prompt in Qwen's chat format, thinking off, as the pipeline feeds it to the encoder."""
        return chat_texts(self.tokenizer, prompts, thinking=False)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            self.caption_texts(prompts),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )
        output = self.text_encoder(
            input_ids=tokens.input_ids.to(self.device),
            attention_mask=tokens.attention_mask.to(self.device),
            output_hidden_states=True,
            use_cache=False,
        )
        stacked = torch.cat([output.hidden_states[layer] for layer in self.text_layers()], dim=-1)
        return {"prompt_embeds": stacked.float().cpu()}

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        size = batch.noisy.shape[0]
        patches = patchify(batch.noisy)  # (B, 128, H/2, W/2)
        channels, rows, columns = patches.shape[1:]
        tokens = patches.flatten(2).transpose(1, 2)  # (B, tokens, 128): the pipeline's _pack_latents
        ids = self.image_ids(rows, columns)
        if source_latents:
            # An edit: the reference images' tokens after the target's, each reference at its own time offset
            # (the pipeline's _prepare_image_ids: 10, 20, ...), as Flux2(Klein)Pipeline feeds its `image`.
            references = [patchify(source) for source in source_latents]
            tokens = torch.cat([tokens, *(reference.flatten(2).transpose(1, 2) for reference in references)], dim=1)
            ids = torch.cat([ids, self.reference_ids(references)], dim=0)
        prompt_embeds = conditioning["prompt_embeds"].to(self.device, self.weight_dtype)
        guidance = None
        if self.transformer_config.get("guidance_embeds"):
            guidance = torch.full((size,), float(settings.guidance_scale), device=self.device)
        prediction = denoiser(
            hidden_states=tokens.to(self.weight_dtype),
            encoder_hidden_states=prompt_embeds,
            timestep=batch.timesteps.to(self.weight_dtype),
            img_ids=ids,
            txt_ids=self.text_ids(prompt_embeds.shape[1]),
            guidance=guidance,
            return_dict=False,
        )[0]
        prediction = prediction[:, : rows * columns]  # the target's tokens (the pipeline slices them so too)
        unpacked = prediction.transpose(1, 2).reshape(size, channels, rows, columns)
        return unpatchify(unpacked)

    def reference_ids(self, references: list[torch.Tensor]) -> torch.Tensor:
        """(tokens, 4) positions of the reference images' tokens, by the pipeline's own rule, made once per layout."""
        import diffusers

        key = (-2, len(references), *references[0].shape[-2:])
        if key not in self.ids_cache:
            pipeline = getattr(diffusers, self.pipeline_class)
            ids = pipeline._prepare_image_ids([reference[:1] for reference in references])
            self.ids_cache[key] = ids.reshape(-1, ids.shape[-1]).to(self.device)
        return self.ids_cache[key]

    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        """An edit: the pipeline's reference images (FLUX.2 takes several). The pipeline refuses one under 64 px a
        side (a sample of a small training resolution): such an image is enlarged to it."""
        if image is None:
            return
        images = image if isinstance(image, list) else [image]
        arguments["image"] = [at_least(picture, MIN_REFERENCE_SIDE) for picture in images]

    def image_ids(self, rows: int, columns: int) -> torch.Tensor:
        """(tokens, 4) positions (0, row, column, 0) of the image tokens, made once per bucket."""
        key = (rows, columns)
        if key not in self.ids_cache:
            self.ids_cache[key] = torch.cartesian_prod(
                torch.arange(1), torch.arange(rows), torch.arange(columns), torch.arange(1)
            ).to(self.device)
        return self.ids_cache[key]

    def text_ids(self, length: int) -> torch.Tensor:
        """(length, 4) positions (0, 0, 0, index) of the caption's tokens."""
        key = (-1, length)
        if key not in self.ids_cache:
            self.ids_cache[key] = torch.cartesian_prod(
                torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length)
            ).to(self.device)
        return self.ids_cache[key]


class Flux2Family(Flux2KleinFamily):
    """FLUX.2 [dev]: the same transformer, 32 B (8 double and 48 single blocks), guidance-distilled (it
    takes the guidance value as an input, like FLUX.1-dev), with the caption read by Mistral Small 3.1
    (`Mistral3ForConditionalGeneration`) at three depths after BFL's system message. The caption is
    encoded by the pipeline's own function, so training sees exactly what generation feeds."""

    name = "flux2"
    pipeline_class = "Flux2Pipeline"
    # The pipeline's `tokenizer` component is Pixtral's processor (a tokenizer where torchvision is missing).
    tokenizer_classes = {"tokenizer": "AutoProcessor"}
    text_encoder_classes = {"text_encoder": "Mistral3ForConditionalGeneration"}

    def latents_from_pipeline(self, latents: torch.Tensor, pipeline: Any, size: int) -> torch.Tensor:
        """Flux2Pipeline returns its normalised patch tokens (B, tokens, 128) as they leave the last step."""
        side = size // (self.vae_scale() * 2)
        return unpatchify(latents.transpose(1, 2).reshape(latents.shape[0], -1, side, side))

    def text_layers(self) -> tuple[int, ...]:
        """The encoder depths the pipeline stacks (its prompt encoder's `hidden_states_layers` default)."""
        from diffusers import Flux2Pipeline

        encode = Flux2Pipeline._get_mistral_3_small_prompt_embeds
        return tuple(inspect.signature(encode).parameters["hidden_states_layers"].default)

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        cut = []
        for prompt in prompts:
            # transformers types the result as text or ids; tokenize=True with return_dict=True gives a mapping.
            ids: Any = self.tokenizer.apply_chat_template(format_input([prompt]), tokenize=True, return_dict=True)
            count = len(ids["input_ids"][0])
            if count > self.max_sequence_length:
                cut.append((prompt, count, self.max_sequence_length))
        return cut

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        from diffusers import Flux2Pipeline

        embeds = Flux2Pipeline._get_mistral_3_small_prompt_embeds(
            self.text_encoder,
            self.tokenizer,
            prompts,
            dtype=torch.float32,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
            hidden_states_layers=self.text_layers(),
        )
        return {"prompt_embeds": embeds.cpu()}
