"""A tiny Chroma model."""

from __future__ import annotations

from pathlib import Path

from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import flow_vae, flux_scheduler, save_pipeline, staging_folder, tiny_t5
from training.engine.testing.tokenizers import write_t5_tokenizer


def build_tiny_chroma(out_dir: Path, *, seed: int = 0) -> Path:
    """A Chroma-shaped pipeline: the tiny FLUX's blocks, modulated by a one-layer approximator from the
    timestep alone, T5 as the only text encoder, and FLUX's 16-channel VAE and scheduler."""
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel
    from transformers import T5Tokenizer

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    t5_vocab = write_t5_tokenizer(staging / "tokenizer")
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,  # 64 wide, as the packed latents (see the tiny FLUX)
        num_attention_heads=4,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    vae = flow_vae()
    pipeline = ChromaPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=tiny_t5(t5_vocab),
        tokenizer=T5Tokenizer.from_pretrained(str(staging / "tokenizer")),
        scheduler=flux_scheduler(),
    )
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    "chroma": TinyModel(
        build=build_tiny_chroma,
        learning=LearningRun(steps=150, learning_rate=2e-3),
        # Its caption reaches the image only through T5's tokens in the joint attention (no pooled vector):
        # a trigger word needs a higher learning rate (tests/training/test_learning.py).
        trigger=LearningRun(steps=150, learning_rate=5e-3),
    ),
}
