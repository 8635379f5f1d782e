"""PRX (Photoroom; prx-256/512/1024-t2i, base, SFT and distilled): a 1.3 B rectified-flow transformer over
FLUX.1's 16-channel VAE. Only image tokens pass its blocks: each block's attention reads the caption's keys
and values beside the image's (projected once by `txt_in`, re-projected by every block, never updated), and
each block has its own timestep modulation.

The caption is what `PRXPipeline` encodes, run here on this family's tokenizer and encoder: the prompt cleaned
as the pipeline cleans it (DeepFloyd's cleaning: lower case, quotes, URLs; it needs ftfy), padded to the
tokenizer's length (256 on the published models) and read by T5Gemma's encoder (its last hidden states),
padding masked. The transformer patches the latents itself, takes the sigma as its timestep and predicts the
velocity `noise - latents`; the schedule has its scheduler's fixed shift.

diffusers' PRX transformer has no adapter mixin and its pipeline's LoRA loader is Stable Diffusion's (which
looks for a UNet), so adapters are injected and loaded with peft directly and the LoRA file is written here.
ComfyUI does not run PRX: no kohya file is written. The checkpoints on the DC-AE VAE (prx-512-t2i-dc-ae) and
the pixel-space PRXPixelPipeline are not trained."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from training.engine.errors import EngineError
from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flow import FlowFamily

if TYPE_CHECKING:
    from PIL import Image


class PRXFamily(FlowFamily):
    name = "prx"
    transformer_class = "PRXTransformer2DModel"
    pipeline_class = "PRXPipeline"
    block_prefixes = ("blocks",)
    # Fused projections: the image's q|k|v and the caption's k|v, then the attention output.
    lora_targets_attention = ("attention.img_qkv_proj", "attention.txt_kv_proj", "attention.to_out.0")
    lora_targets_linear = ("gate_proj", "up_proj", "down_proj", "modulation.lin")  # the MLP and the modulation
    tokenizer_classes = {"tokenizer": "AutoTokenizer"}
    text_encoder_classes = {"text_encoder": "T5GemmaEncoder"}
    diffusers_lora_loading = False  # PRXPipeline's loader is Stable Diffusion's, for a UNet

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        from diffusers import PRXPipeline

        index = dict(PRXPipeline.load_config(base_model))
        vae = index.get("vae") or [None, "AutoencoderKL"]
        if vae[1] != "AutoencoderKL":
            raise EngineError(
                f"base model {base_model!r} is a PRX on the {vae[1]} VAE; only PRX on FLUX.1's VAE (AutoencoderKL) "
                "is trained here (the DC-AE and pixel-space variants are not)"
            )
        self.sample_size = index.get("default_sample_size")
        self.patch_size = int(self.transformer_config.get("patch_size", 2))

    def default_resolution(self) -> int:
        return int(self.sample_size or super().default_resolution())

    def load_text_encoder(self, component: str) -> torch.nn.Module:
        """T5Gemma's encoder, from the encoder half of the saved T5Gemma configuration (transformers exports no
        class for the encoder alone; diffusers' wrapper reads the configuration without the subfolder)."""
        from transformers.models.t5gemma.configuration_t5gemma import T5GemmaConfig
        from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder

        config: Any = T5GemmaConfig.from_pretrained(self.base_model, subfolder=component)
        encoder: torch.nn.Module = T5GemmaEncoder.from_pretrained(
            self.base_model, subfolder=component, config=config.encoder, dtype=self.weight_dtype
        )
        return encoder.eval()

    def text_pipeline(self) -> Any:
        """A PRXPipeline holding only this family's tokenizer and text encoder: its own prompt code runs."""
        from diffusers import PRXPipeline

        pipeline: Any = PRXPipeline(
            transformer=None, scheduler=None, text_encoder=self.text_encoder, tokenizer=self.tokenizer, vae=None
        )
        return pipeline

    def long_prompts(self, prompts: list[str]) -> list[tuple[str, int, int]]:
        clean = self.text_pipeline().text_preprocessor.clean_text
        limit = int(self.tokenizer.model_max_length)
        counts = [len(self.tokenizer(clean(prompt)).input_ids) for prompt in prompts]
        return [(prompt, count, limit) for prompt, count in zip(prompts, counts, strict=True) if count > limit]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, mask, _, _ = self.text_pipeline()._encode_prompt_standard(
            prompts, self.device, do_classifier_free_guidance=False
        )
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
        return denoiser(
            hidden_states=batch.noisy.to(self.weight_dtype),
            timestep=batch.timesteps.to(self.weight_dtype),
            encoder_hidden_states=conditioning["prompt_embeds"].to(self.device, self.weight_dtype),
            attention_mask=conditioning["text_mask"].to(self.device).bool(),
            return_dict=False,
        )[0]

    def latents_from_pipeline(self, latents: torch.Tensor, pipeline: Any, size: int) -> torch.Tensor:
        return latents  # PRXPipeline's latents are the transformer's own, scaled

    def save_lora(
        self,
        state_dict: dict[str, torch.Tensor],
        directory: str,
        weight_name: str,
        adapter_metadata: dict[str, Any],
        text_encoders: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    ) -> None:
        """The adapter's tensors under the transformer's prefix (the layout diffusers' writers use); the export
        adds the peft config the loader needs."""
        from pathlib import Path

        from safetensors.torch import save_file

        tensors = {f"transformer.{name}": tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
        save_file(tensors, str(Path(directory) / weight_name), metadata={"format": "pt"})

    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        """The size asked for: PRXPipeline snaps a request to its aspect-ratio bins, which exist for the published
        sizes only (256, 512, 1024); a model of another size generates the size asked for."""
        from diffusers.pipelines.prx.pipeline_prx import ASPECT_RATIO_BINS

        arguments["use_resolution_binning"] = pipeline.default_sample_size in ASPECT_RATIO_BINS
