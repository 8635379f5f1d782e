"""A tiny PRX model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import flow_vae, staging_folder, unit_scale_embeddings
from training.engine.testing.tokenizers import write_llama_tokenizer

CAPTION_TOKENS = 64  # the tokenizer's length, which the pipeline pads every caption to (256 on the real models)


def build_tiny_prx(out_dir: Path, *, seed: int = 0) -> Path:
    """A PRX-shaped pipeline: two blocks over 2x2 patches of FLUX.1's 16-channel VAE layout (measured factors),
    reading a two-layer T5Gemma encoder behind a byte-level tokenizer that pads every caption, and a fixed-shift
    flow scheduler. Its text encoder is saved with the composite T5Gemma configuration the pipeline's loader
    reads (T5Gemma's encoder alone saves a configuration that loader does not understand)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, PRXPipeline, PRXTransformer2DModel
    from transformers import PreTrainedTokenizerFast
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaConfig, T5GemmaModuleConfig
    from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_llama_tokenizer(staging / "tokenizer")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(staging / "tokenizer"))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = CAPTION_TOKENS
    tokenizer.save_pretrained(str(staging / "tokenizer"))
    width = 32
    module: Any = T5GemmaModuleConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=CAPTION_TOKENS,
        query_pre_attn_scalar=8,
        dropout_rate=0.0,  # type: ignore[call-arg]  # not a declared field of the module configuration; its MLP reads it
        layer_types=["full_attention"] * 2,
        pad_token_id=int(tokenizer.pad_token_id),
    )
    text_encoder = T5GemmaEncoder(module).eval()
    unit_scale_embeddings(text_encoder)  # the transformer reads the caption through a plain Linear (see FLUX.2)
    transformer: Any = PRXTransformer2DModel(
        in_channels=16,
        patch_size=2,
        context_in_dim=width,
        hidden_size=64,  # as wide as a 2x2 patch of 16-channel latents (see the tiny FLUX)
        mlp_ratio=2.0,
        num_heads=4,
        depth=2,
        axes_dim=[8, 8],  # sums to the head width, as the real (32, 32) to 64
    )
    with torch.no_grad():
        # PRX starts every block's modulation at zero (an untrained block passes its input through), where a
        # trained one's is not: left at zero, no adapter in a block would get a gradient.
        for block in transformer.blocks:
            block.modulation.lin.reset_parameters()
    pipeline: Any = PRXPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        vae=flow_vae(),
        default_sample_size=64,
    )
    pipeline.save_pretrained(str(staging), safe_serialization=True)
    # As Photoroom's published folders have them: the text encoder is diffusers' PRX T5Gemma wrapper (transformers
    # exports no class for T5Gemma's encoder alone), saved with the composite T5Gemma configuration that wrapper
    # (and this family's loader) reads the encoder half of.
    index = json.loads((staging / "model_index.json").read_text(encoding="utf-8"))
    index["text_encoder"] = ["prx", "T5GemmaEncoder"]
    (staging / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    config = T5GemmaConfig(encoder=module.to_dict(), decoder=module.to_dict()).to_dict()
    config["architectures"] = ["T5GemmaEncoder"]
    (staging / "text_encoder" / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    staging.rename(out_dir)
    return out_dir


TINY_MODELS = {
    "prx": TinyModel(
        build=build_tiny_prx,
        learning=LearningRun(steps=150, learning_rate=2e-3),
        # Its caption reaches the image only as the attention's extra keys and values: a trigger word pulled 0.00
        # after 150 steps at 2e-3 to 1e-2, then 0.95 after 300 at 1e-2 and 2.35 after 300 at 5e-3.
        trigger=LearningRun(steps=300, learning_rate=5e-3),
    ),
}
