"""A tiny SD 3.5 medium-shaped model."""

from __future__ import annotations

from pathlib import Path

from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import clip_config, flow_vae, save_pipeline, staging_folder, tiny_t5
from training.engine.testing.tokenizers import write_clip_tokenizer, write_t5_tokenizer


def build_tiny_sd3(out_dir: Path, *, seed: int = 0) -> Path:
    """An SD 3.5 medium-shaped pipeline: an MMDiT whose first block has the dual (image-only) attention
    and RMS-normed q/k, two CLIP encoders with projections and T5, a 16-channel VAE with a shift."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5Tokenizer

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    clip_vocab = write_clip_tokenizer(staging / "tokenizer")
    write_clip_tokenizer(staging / "tokenizer_2")
    t5_vocab = write_t5_tokenizer(staging / "tokenizer_3")
    transformer = SD3Transformer2DModel(
        sample_size=32,  # latent pixels: 64-pixel images over a VAE that downsamples by 2
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        # 4 x 32 = 128 wide: at least as wide as a 2x2 patch of 16-channel latents (see the tiny FLUX),
        # and 64 per block, the ratio of the published models that ComfyUI relies on (it reads the
        # number of blocks off the width: 1536 / 64 = 24 for medium, 2432 / 64 = 38 for large).
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,  # T5's width; the two CLIPs' 32 + 32 are padded to it, as in the pipeline
        caption_projection_dim=128,
        pooled_projection_dim=64,  # both CLIPs' 32-wide projections side by side
        pos_embed_max_size=64,  # up to 256-pixel images
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = flow_vae()
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(clip_config(clip_vocab)),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(clip_vocab)),
        text_encoder_3=tiny_t5(t5_vocab, width=64),
        tokenizer=CLIPTokenizer.from_pretrained(str(staging / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(staging / "tokenizer_2")),
        tokenizer_3=T5Tokenizer.from_pretrained(str(staging / "tokenizer_3")),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD 3.5's fixed shift
    )
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    "sd3": TinyModel(
        build=build_tiny_sd3,
        learning=LearningRun(steps=150, learning_rate=2e-3),
        trigger=LearningRun(steps=150, learning_rate=2e-3),
    ),
}
