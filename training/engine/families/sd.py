"""Stable Diffusion 1.x and SDXL: UNet denoisers trained with noise (epsilon or v) prediction."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from training.engine.families.base import Family, randn


class SD15Family(Family):
    name = "sd15"
    denoiser_key = "unet"
    lora_target_modules = ["to_q", "to_k", "to_v", "to_out.0"]

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        from diffusers import DDPMScheduler, UNet2DConditionModel

        self.unet_config = UNet2DConditionModel.load_config(base_model, subfolder="unet")
        self.vae_config = _vae_config(base_model)
        self.noise_scheduler = DDPMScheduler.from_pretrained(base_model, subfolder="scheduler")

    def vae_scale(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    def default_resolution(self) -> int:
        return int(self.unet_config["sample_size"]) * self.vae_scale()

    def size_multiple(self) -> int:
        return self.vae_scale() * 2 ** (len(self.unet_config["block_out_channels"]) - 1)

    def load_encoders(self) -> None:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(self.base_model, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(
            self.base_model, subfolder="text_encoder", dtype=self.weight_dtype
        ).to(self.device)
        self.vae = AutoencoderKL.from_pretrained(self.base_model, subfolder="vae", torch_dtype=self.weight_dtype).to(
            self.device
        )
        self.encoders_loaded = True

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        shift = self.vae_config.get("shift_factor") or 0.0
        return (latents - shift) * float(self.vae_config["scaling_factor"])

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return {"prompt_embeds": self.text_encoder(ids)[0].float().cpu()}

    def load_denoiser(self) -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(
            self.base_model, subfolder="unet", torch_dtype=self.weight_dtype
        ).to(self.device)

    def added_conditioning(self, conditioning: dict[str, torch.Tensor], latents: torch.Tensor) -> dict[str, Any] | None:
        return None

    def loss(
        self,
        denoiser: torch.nn.Module,
        latents: torch.Tensor,
        conditioning: dict[str, torch.Tensor],
        generator: torch.Generator,
        *,
        source_latents: torch.Tensor | None = None,
        options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        # Noise: pick a timestep per sample and noise the latents to it.
        batch = latents.shape[0]
        noise = randn(latents.shape, generator, self.device)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (batch,), generator=generator, device=generator.device
        ).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        # Predict, and compare with what was added.
        prediction = denoiser(
            noisy.to(self.weight_dtype),
            timesteps,
            encoder_hidden_states=conditioning["prompt_embeds"].to(self.weight_dtype),
            added_cond_kwargs=self.added_conditioning(conditioning, latents),
        ).sample
        return F.mse_loss(prediction.float(), target.float())

    def save_lora(
        self, state_dict: dict[str, torch.Tensor], directory: str, weight_name: str, adapter_metadata: dict[str, Any]
    ) -> None:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            directory, unet_lora_layers=state_dict, weight_name=weight_name, unet_lora_adapter_metadata=adapter_metadata
        )


class SDXLFamily(SD15Family):
    name = "sdxl"

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.time_ids: dict[tuple[int, int, int], torch.Tensor] = {}

    def load_encoders(self) -> None:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(self.base_model, subfolder="tokenizer")
        self.tokenizer_2 = CLIPTokenizer.from_pretrained(self.base_model, subfolder="tokenizer_2")
        self.text_encoder = CLIPTextModel.from_pretrained(
            self.base_model, subfolder="text_encoder", dtype=self.weight_dtype
        ).to(self.device)
        self.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            self.base_model, subfolder="text_encoder_2", dtype=self.weight_dtype
        ).to(self.device)
        # SDXL's VAE overflows in half precision; it encodes in fp32 once, while caching.
        self.vae = AutoencoderKL.from_pretrained(self.base_model, subfolder="vae").to(self.device)
        self.encoders_loaded = True

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels.to(self.device, torch.float32)).latent_dist
        return dist.mean.float().cpu(), dist.std.float().cpu()

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        hidden_states = []
        pooled = None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            output = encoder(ids, output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])  # SDXL conditions on the penultimate layer
            pooled = output[0]  # the second encoder's projected pooled output
        return {
            "prompt_embeds": torch.cat(hidden_states, dim=-1).float().cpu(),
            "pooled_prompt_embeds": pooled.float().cpu(),  # type: ignore[union-attr]
        }

    def added_conditioning(self, conditioning: dict[str, torch.Tensor], latents: torch.Tensor) -> dict[str, Any]:
        # Original size, crop offset and target size: the bucket's size, uncropped.
        height, width = latents.shape[-2] * self.vae_scale(), latents.shape[-1] * self.vae_scale()
        key = (height, width, latents.shape[0])
        if key not in self.time_ids:  # made once per bucket: no copy from the host in the loop
            rows = [[height, width, 0, 0, height, width]] * latents.shape[0]
            self.time_ids[key] = torch.tensor(rows, dtype=self.weight_dtype).to(self.device)
        return {
            "text_embeds": conditioning["pooled_prompt_embeds"].to(self.device, self.weight_dtype),
            "time_ids": self.time_ids[key],
        }

    def save_lora(
        self, state_dict: dict[str, torch.Tensor], directory: str, weight_name: str, adapter_metadata: dict[str, Any]
    ) -> None:
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline.save_lora_weights(
            directory, unet_lora_layers=state_dict, weight_name=weight_name, unet_lora_adapter_metadata=adapter_metadata
        )


def _vae_config(base_model: str) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    return dict(AutoencoderKL.load_config(base_model, subfolder="vae"))
