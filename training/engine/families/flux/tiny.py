"""A tiny FLUX.1 [dev] model (Kontext shares it)."""

from __future__ import annotations

from pathlib import Path

from training.engine.testing import FLOW_LOSS_DROP, LearningRun, TinyModel
from training.engine.testing.models import clip_config, flow_vae, flux_scheduler, save_pipeline, staging_folder, tiny_t5
from training.engine.testing.tokenizers import write_clip_tokenizer, write_t5_tokenizer


def build_tiny_flux(out_dir: Path, *, seed: int = 0, kontext: bool = False) -> Path:
    """A FLUX.1-dev-shaped pipeline (guidance embedding, CLIP + T5, 16-channel VAE); Kontext shares it."""
    import torch
    from diffusers import (
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer, T5Tokenizer

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    clip_vocab = write_clip_tokenizer(staging / "tokenizer")
    t5_vocab = write_t5_tokenizer(staging / "tokenizer_2")
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        # 4 x 16 = 64 wide, as wide as the 2x2-packed latents (16 x 4): a narrower model would squeeze
        # every token through a random projection that no block adapter can undo.
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    clip = CLIPTextModel(clip_config(clip_vocab))
    t5 = tiny_t5(t5_vocab)
    vae = flow_vae()
    pipeline_class = FluxKontextPipeline if kontext else FluxPipeline
    pipeline = pipeline_class(
        transformer=transformer,
        vae=vae,
        text_encoder=clip,
        text_encoder_2=t5,
        tokenizer=CLIPTokenizer.from_pretrained(str(staging / "tokenizer")),
        tokenizer_2=T5Tokenizer.from_pretrained(str(staging / "tokenizer_2")),
        scheduler=flux_scheduler(),
    )
    return save_pipeline(pipeline, staging, out_dir)


def build_tiny_kontext(out_dir: Path, *, seed: int = 0) -> Path:
    return build_tiny_flux(out_dir, seed=seed, kontext=True)


TINY_MODELS = {
    "flux": TinyModel(
        build=build_tiny_flux,
        learning=LearningRun(steps=300, learning_rate=2e-3, loss_drop=FLOW_LOSS_DROP),
        trigger=LearningRun(steps=300, learning_rate=2e-3),
    ),
    # An edit model learns from pairs; its learning run edits blue discs into red ones (bench/learning.py).
    "flux-kontext": TinyModel(
        build=build_tiny_kontext, learning=LearningRun(steps=300, learning_rate=2e-3, loss_drop=FLOW_LOSS_DROP)
    ),
}
