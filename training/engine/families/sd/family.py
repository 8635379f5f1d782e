"""Stable Diffusion 1.x and SDXL: UNet denoisers trained with noise (epsilon or v) prediction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from contract.families import native_resolution, vae_downscale
from training.engine.families.base import Family, NoisedBatch, NoiseSettings, randn, vae_config


class SD15Family(Family):
    name = "sd15"
    denoiser_key = "unet"
    block_prefixes = ("down_blocks", "mid_block", "up_blocks")
    lora_targets_attention = ("to_q", "to_k", "to_v", "to_out.0")
    lora_targets_linear = ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
    lora_targets_conv = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
    tokenizer_classes = {"tokenizer": "CLIPTokenizer"}
    text_encoder_classes = {"text_encoder": "CLIPTextModel"}

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        from diffusers import DDPMScheduler, UNet2DConditionModel

        self.unet_config = UNet2DConditionModel.load_config(base_model, subfolder="unet")
        self.vae_config = vae_config(base_model)
        self.noise_scheduler = DDPMScheduler.from_pretrained(base_model, subfolder="scheduler")
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(device)

    def vae_scale(self) -> int:
        return vae_downscale(self.vae_config)

    def default_resolution(self) -> int:
        return native_resolution(self.name, vae_config=self.vae_config, denoiser_config=dict(self.unet_config))

    def size_multiple(self) -> int:
        return self.vae_scale() * 2 ** (len(self.unet_config["block_out_channels"]) - 1)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        shift = self.vae_config.get("shift_factor") or 0.0
        return (latents - shift) * float(self.vae_config["scaling_factor"])

    # Text encoders a LoRA can be trained on (train_text_encoder): pipeline component -> its tokenizer.
    text_encoder_tokenizers = {"text_encoder": "tokenizer"}

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids per text encoder, cut at the encoder's 77 tokens as the pipeline does (the trainer
        warns about each cut caption)."""
        ids = {}
        for component, tokenizer_name in self.text_encoder_tokenizers.items():
            tokenizer = getattr(self, tokenizer_name)
            ids[component] = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
        return ids

    def encode_tokens(
        self, ids: dict[str, torch.Tensor], encoders: dict[str, torch.nn.Module]
    ) -> dict[str, torch.Tensor]:
        """Conditioning from token ids through `encoders` (the frozen ones while caching, the ones
        with trained adapters while training the text encoder)."""
        encoder = encoders["text_encoder"]
        return {"prompt_embeds": encoder(ids["text_encoder"].to(self.device))[0]}

    def text_encoders(self) -> dict[str, torch.nn.Module]:
        return {component: getattr(self, component) for component in self.text_encoder_tokenizers}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.encode_tokens(self.tokenize(prompts), self.text_encoders())
        return {key: value.float().cpu() for key, value in encoded.items()}

    def load_denoiser(self, device: torch.device | None = None) -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(
            self.base_model, subfolder="unet", torch_dtype=self.weight_dtype
        ).to(device or self.device)

    def added_conditioning(self, conditioning: dict[str, torch.Tensor], latents: torch.Tensor) -> dict[str, Any] | None:
        return None

    def add_noise(
        self,
        latents: torch.Tensor,
        generator: torch.Generator,
        settings: NoiseSettings,
        *,
        levels: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> NoisedBatch:
        batch = latents.shape[0]
        steps = int(self.noise_scheduler.config.num_train_timesteps)
        if noise is None:
            noise = randn(latents.shape, generator, self.device)
            if settings.noise_offset:
                # Offset noise: a per-image, per-channel constant shifts the mean brightness the model
                # must learn to remove, so it can make images darker or brighter than average.
                offset = randn((batch, latents.shape[1], 1, 1), generator, self.device)
                noise = noise + settings.noise_offset * offset
        if levels is None:
            timesteps = torch.randint(0, steps, (batch,), generator=generator, device=generator.device).to(self.device)
        else:
            timesteps = (levels.to(self.device) * (steps - 1)).round().long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        v_prediction = self.noise_scheduler.config.prediction_type == "v_prediction"
        target = self.noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
        weights = None
        if settings.min_snr_gamma:
            # Min-SNR-gamma (Hang et al. 2023): easy, low-noise timesteps stop dominating the loss.
            alpha_bar = self.alphas_cumprod[timesteps].float()
            snr = alpha_bar / (1.0 - alpha_bar)
            clipped = torch.clamp(snr, max=settings.min_snr_gamma)
            weights = clipped / (snr + 1.0) if v_prediction else clipped / snr
        return NoisedBatch(noisy=noisy, timesteps=timesteps, target=target, weights=weights)

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
            batch.noisy.to(self.weight_dtype),
            batch.timesteps,
            encoder_hidden_states=conditioning["prompt_embeds"].to(self.weight_dtype),
            added_cond_kwargs=self.added_conditioning(conditioning, batch.noisy),
        ).sample

    def save_lora(
        self,
        state_dict: dict[str, torch.Tensor],
        directory: str,
        weight_name: str,
        adapter_metadata: dict[str, Any],
        text_encoders: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    ) -> None:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            directory,
            unet_lora_layers=state_dict,
            weight_name=weight_name,
            unet_lora_adapter_metadata=adapter_metadata,
            **_text_encoder_arguments(text_encoders),
        )


class SDXLFamily(SD15Family):
    name = "sdxl"
    tokenizer_classes = {"tokenizer": "CLIPTokenizer", "tokenizer_2": "CLIPTokenizer"}
    text_encoder_classes = {"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection"}
    vae_in_full_precision = True  # SDXL's VAE overflows in half precision; it encodes in fp32 once, while caching
    conditions_on_sizes = True

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.time_ids: dict[tuple[int, int, int], torch.Tensor] = {}
        index = _model_index(base_model)
        # SDXL base feeds zeros, not the empty prompt's encoding, as its unconditional input.
        self.zeros_for_empty_prompt = bool(index.get("force_zeros_for_empty_prompt", True))

    text_encoder_tokenizers = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}

    def encode_tokens(
        self, ids: dict[str, torch.Tensor], encoders: dict[str, torch.nn.Module]
    ) -> dict[str, torch.Tensor]:
        hidden_states = []
        pooled = None
        for component in ("text_encoder", "text_encoder_2"):
            output = encoders[component](ids[component].to(self.device), output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])  # SDXL conditions on the penultimate layer
            pooled = output[0]  # the second encoder's projected pooled output
        return {"prompt_embeds": torch.cat(hidden_states, dim=-1), "pooled_prompt_embeds": pooled}  # type: ignore[dict-item]

    def added_conditioning(self, conditioning: dict[str, torch.Tensor], latents: torch.Tensor) -> dict[str, Any]:
        time_ids = conditioning.get("time_ids")
        if time_ids is None:
            # No per-image sizes given (benchmarks): the bucket's size, uncropped, made once per bucket.
            height, width = latents.shape[-2] * self.vae_scale(), latents.shape[-1] * self.vae_scale()
            key = (height, width, latents.shape[0])
            if key not in self.time_ids:
                rows = [[height, width, 0, 0, height, width]] * latents.shape[0]
                self.time_ids[key] = torch.tensor(rows, dtype=self.weight_dtype).to(self.device)
            time_ids = self.time_ids[key]
        return {
            "text_embeds": conditioning["pooled_prompt_embeds"].to(self.device, self.weight_dtype),
            "time_ids": time_ids.to(self.device, self.weight_dtype),
        }

    def save_lora(
        self,
        state_dict: dict[str, torch.Tensor],
        directory: str,
        weight_name: str,
        adapter_metadata: dict[str, Any],
        text_encoders: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    ) -> None:
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline.save_lora_weights(
            directory,
            unet_lora_layers=state_dict,
            weight_name=weight_name,
            unet_lora_adapter_metadata=adapter_metadata,
            **_text_encoder_arguments(text_encoders),
        )


def _text_encoder_arguments(
    text_encoders: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] | None,
) -> dict[str, Any]:
    """diffusers' `save_lora_weights` keywords for trained text encoder adapters (state, config)."""
    arguments: dict[str, Any] = {}
    for component, (state, config) in (text_encoders or {}).items():
        arguments[f"{component}_lora_layers"] = state
        arguments[f"{component}_lora_adapter_metadata"] = config
    return arguments


def _model_index(base_model: str) -> dict[str, Any]:
    local = Path(base_model) / "model_index.json"
    if local.is_file():
        return dict(json.loads(local.read_text(encoding="utf-8")))
    from huggingface_hub import hf_hub_download

    return dict(json.loads(Path(hf_hub_download(base_model, "model_index.json")).read_text(encoding="utf-8")))
