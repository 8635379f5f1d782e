"""Tiny SD 1.5 and SDXL models: UNets of two levels over small VAEs with calibrated latents."""

from __future__ import annotations

from pathlib import Path

from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import calibrate_vae, clip_config, save_pipeline, small_vae, staging_folder
from training.engine.testing.tokenizers import write_clip_tokenizer


def build_tiny_sd15(out_dir: Path, *, seed: int = 0) -> Path:
    """A Stable Diffusion 1.5-shaped pipeline (UNet, VAE, CLIP text encoder) of about 8 MB."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    # Built beside the target and renamed at the end, so a crash never leaves a half-written model.
    staging = staging_folder(out_dir)
    tokenizer_dir = staging / "tokenizer"
    vocab_size = write_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        # Attention at both levels, as real SD has it at its high-resolution levels too: the adapters
        # of the default targets then reach the image at full latent resolution.
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        # 8 and 16 channels per group, as real SD's 32 groups of 320-1280 channels hold 10-40: with one
        # channel per group every GroupNorm, conv_norm_out's included, removes each channel's spatial
        # mean, so no caption can move the overall colour of the prediction and a trigger word cannot
        # be learned (measured: 0.00 of the red-blue distance, against 0.2-1.3 with 4 groups).
        norm_num_groups=4,
    )
    # A VAE that downsamples by 4 (SD's by 8): attention over a 64-pixel image's 16x16 latents is cheap
    # on a CPU, where 32x32 made every step four times slower.
    vae = small_vae(
        block_out_channels=[32, 32, 64],
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
    )
    calibrate_vae(vae, with_shift=False)
    text_encoder = CLIPTextModel(clip_config(vocab_size))
    # Euler, as SDXL's: good images in few sampling steps, which the tests' generations use.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return save_pipeline(pipeline, staging, out_dir)


def build_tiny_sdxl(out_dir: Path, *, seed: int = 0) -> Path:
    """An SDXL-shaped pipeline: UNet with text-time conditioning and two CLIP text encoders."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_clip_tokenizer(staging / "tokenizer")
    write_clip_tokenizer(staging / "tokenizer_2")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        # Cross-attention at both levels, where the real SDXL has none at its highest resolution: here the
        # default LoRA targets (attention and linear layers) would otherwise reach the caption only at 8x8
        # latents, behind random frozen top-level resnets, and a trigger word could not move the image's
        # colour (measured: -0.1 to 0.0 of the red-blue distance after 150 or 400 steps, with offset noise
        # 0, 0.5 or 1 or 4 norm groups, while FULL or conv targets reached +1.4-2.1; with this layout
        # +0.6-1.7 over four seeds in 150 steps).
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8,
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    vae = small_vae()
    calibrate_vae(vae, with_shift=False)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    pipeline = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(clip_config(vocab_size)),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(vocab_size)),
        tokenizer=CLIPTokenizer.from_pretrained(str(staging / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(staging / "tokenizer_2")),
        scheduler=scheduler,
    )
    return save_pipeline(pipeline, staging, out_dir)


# The trigger-word runs train with offset noise: SD's noise prediction sees an image's overall colour through
# the noise, so without it the caption is never needed for colour (tests/training/test_learning.py).
TINY_MODELS = {
    "sd15": TinyModel(
        build=build_tiny_sd15,
        learning=LearningRun(steps=400, learning_rate=3e-3),
        trigger=LearningRun(steps=300, learning_rate=3e-3, options={"noise_offset": 0.5}),
    ),
    "sdxl": TinyModel(
        build=build_tiny_sdxl,
        learning=LearningRun(steps=400, learning_rate=3e-3),
        trigger=LearningRun(steps=300, learning_rate=3e-3, options={"noise_offset": 0.5}),
    ),
}
