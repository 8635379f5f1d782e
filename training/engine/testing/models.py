"""Shared parts of the tiny test models: small text encoders and VAEs whose latents have the real models'
unit spread, the FLUX schedule, and writing a pipeline folder atomically."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.engine.errors import EngineError

if TYPE_CHECKING:
    from transformers import CLIPTextConfig


def clip_config(vocab_size: int, *, positions: int = 77) -> CLIPTextConfig:
    """A two-layer CLIP text encoder for the byte-level tokenizer above, reading `positions` tokens."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        projection_dim=32,
    )


def small_vae(**overrides: object) -> object:
    """A two-block VAE (downsampling by 2), so 64-pixel images train in milliseconds."""
    from diffusers import AutoencoderKL

    options: dict = {
        "block_out_channels": [32, 64],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "sample_size": 64,
        # One normalisation group (diffusers' default is 32, one per channel here): a per-channel
        # GroupNorm removes each channel's spatial mean, so a random encoder maps solid red and solid
        # blue to nearly the same latent means (0.15 apart in unit-variance latents, against ~1-2
        # with one group). Colour is what the learning tests train and measure.
        "norm_num_groups": 1,
    }
    options.update(overrides)
    return AutoencoderKL(**options)


def calibration_pixels() -> Any:
    """(30, 3, 64, 64) images in [-1, 1]: the synthetic shapes the demo and the tests train on, plus
    solid colours."""
    from io import BytesIO

    import numpy as np
    import torch
    from PIL import Image

    from training.engine.testing.images import make_images

    arrays = []
    for picture in make_images(24, seed=1234):
        image = Image.open(BytesIO(picture.content)).convert("RGB").resize((64, 64))
        arrays.append(np.asarray(image, dtype=np.float32))
    for colour in ((255, 0, 0), (0, 0, 255), (0, 200, 0), (255, 255, 255), (0, 0, 0), (128, 128, 128)):
        arrays.append(np.full((64, 64, 3), colour, dtype=np.float32))
    return torch.from_numpy(np.stack(arrays) / 127.5 - 1.0).permute(0, 3, 1, 2)


def calibrate_vae(vae: object, *, with_shift: bool) -> None:
    """Set the VAE's `scaling_factor` (and, for flow models, `shift_factor`) so that the latents of
    ordinary images have unit variance in the denoiser's space, as the real models' factors do.

    A random-weight VAE with SD's factor 0.18215 gives latents with a standard deviation of about
    0.04: solid red and solid blue then differ by an MSE of 0.001 and a dataset carries no signal.
    The statistics come from the synthetic shapes the demo and the tests train on, plus solid colours."""
    import torch

    with torch.no_grad():
        latents = vae.encode(calibration_pixels()).latent_dist.mean  # type: ignore[attr-defined]
    shift = float(latents.mean()) if with_shift else 0.0
    spread = float((latents - shift).pow(2).mean().sqrt())
    values: dict[str, float] = {"scaling_factor": round(1.0 / spread, 5)}
    if with_shift:
        values["shift_factor"] = round(shift, 5)
    vae.register_to_config(**values)  # type: ignore[attr-defined]


def flow_vae() -> Any:
    """FLUX's VAE layout, small: 16 latent channels, no quant convs, downsampling by 2, with a measured
    scaling and shift factor (FLUX.1, Chroma, SD 3.5 and Z-Image share it)."""
    vae = small_vae(block_out_channels=[32, 32], latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    calibrate_vae(vae, with_shift=True)
    return vae


def flux_scheduler() -> Any:
    """FLUX.1-dev's own schedule (Chroma's too): the shift grows with the image's token count."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def tiny_t5(vocab_size: int, width: int = 32) -> object:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=width // 8,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,  # type: ignore[call-arg]  # PreTrainedConfig keeps extra keywords; its typing omits them
        )
    )


MOD_GAIN = 10.0  # the tiny Qwen-Image's modulation gain (see build_tiny_qwenimage)


def unit_scale_embeddings(model: Any) -> None:
    """FLUX.2 reads its encoder's intermediate hidden states unnormalised (a plain Linear, no norm, in front
    of the transformer). A trained LLM's residual stream runs at about unit scale; a random one at its
    embeddings' init scale (std 0.02). The embeddings are scaled up to unit scale."""
    import torch

    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings.mul_(1.0 / float(embeddings.std()))


def staging_folder(out_dir: Path) -> Path:
    if out_dir.exists():
        raise EngineError(f"{out_dir} already exists; remove it or choose another --out folder")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def save_pipeline(pipeline: Any, staging: Path, out_dir: Path, *, finish: Callable[[Path], None] | None = None) -> Path:
    """Write the pipeline into its staging folder (then `finish` it), then rename that to `out_dir`: a crash
    never leaves a half-written model where a finished one is expected."""
    pipeline.save_pretrained(str(staging), safe_serialization=True)
    if finish is not None:
        finish(staging)
    staging.rename(out_dir)
    return out_dir
