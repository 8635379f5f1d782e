"""A tiny Z-Image model."""

from __future__ import annotations

from pathlib import Path

from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import flow_vae, save_pipeline, staging_folder
from training.engine.testing.tokenizers import write_qwen_tokenizer


def build_tiny_zimage(out_dir: Path, *, seed: int = 0) -> Path:
    """A Z-Image-shaped pipeline: a single-stream DiT (noise and caption refiners, then joint layers),
    a two-layer Qwen3 text encoder with a byte-level tokenizer and Qwen's chat template, FLUX's 16-channel
    VAE layout and Z-Image's fixed-shift flow scheduler."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_qwen_tokenizer(staging / "tokenizer")
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=vocab_size - 3,
            eos_token_id=vocab_size - 1,
        )
    )
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=64,  # as wide as a 2x2 patch of 16-channel latents (see the tiny FLUX)
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,  # the Qwen3 encoder's width
        axes_dims=[8, 12, 12],  # sums to the head width, 64 / 2
        axes_lens=[1024, 64, 64],
    )
    vae = flow_vae()
    pipeline = ZImagePipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=Qwen2Tokenizer.from_pretrained(str(staging / "tokenizer")),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
    )
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    "zimage": TinyModel(
        build=build_tiny_zimage,
        learning=LearningRun(steps=150, learning_rate=2e-3),
        trigger=LearningRun(steps=150, learning_rate=2e-3),
    ),
}
