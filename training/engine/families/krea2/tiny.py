"""A tiny Krea 2 model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.engine.families.qwenimage.tiny import tiny_qwen_vae, write_qwen_template_tokenizer
from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import save_pipeline, staging_folder, unit_scale_embeddings

# The encoder depths the tiny pipeline stacks (the real one's 12 of Qwen3-VL-4B's 36): hidden_states[k].
TINY_SELECT_LAYERS = (1, 2, 3)


def build_tiny_krea2(out_dir: Path, *, seed: int = 0) -> Path:
    """A Krea-2-shaped pipeline: two single-stream blocks with grouped-query attention and gated outputs, a
    text fusion of one layer-wise and one refiner block over three depths of a three-layer Qwen3-VL, behind the
    byte-level Qwen tokenizer that reads Qwen-Image's system template as the 34 tokens the pipeline cuts, the
    tiny Qwen-Image VAE (measured per-channel statistics) and Krea 2's resolution-dependent schedule."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline, Krea2Transformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3VLConfig, Qwen3VLModel

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_qwen_template_tokenizer(staging / "tokenizer")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(staging / "tokenizer"))
    special = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in ("<|endoftext|>", "<|im_end|>")}
    width = 32
    text_encoder = Qwen3VLModel(
        Qwen3VLConfig(
            text_config={
                "vocab_size": vocab_size,
                "hidden_size": width,
                "intermediate_size": 48,
                "num_hidden_layers": len(TINY_SELECT_LAYERS),
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 8,
                "max_position_embeddings": 2048,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 1, 1]},
                "pad_token_id": special["<|endoftext|>"],
                "eos_token_id": special["<|im_end|>"],
            },
            # The vision tower the real encoder carries (and never runs for text), as small as it goes.
            vision_config={
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": width,
                "deepstack_visual_indexes": [],
                "num_position_embeddings": 16,
            },
            # Vision markers the text-to-image prompts never contain; ids inside the vocabulary.
            image_token_id=special["<|endoftext|>"],
            video_token_id=special["<|endoftext|>"],
            vision_start_token_id=special["<|endoftext|>"],
            vision_end_token_id=special["<|endoftext|>"],
        )
    ).eval()
    unit_scale_embeddings(text_encoder)  # the text fusion reads the depths through plain Linears (see FLUX.2)
    transformer: Any = Krea2Transformer2DModel(
        in_channels=64,  # 2x2 patches of 16 latent channels
        num_layers=2,
        attention_head_dim=16,  # 4 x 16 = 64 wide, as a 2x2 patch of 16-channel latents (see the tiny FLUX)
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        timestep_embed_dim=32,
        text_hidden_dim=width,
        num_text_layers=len(TINY_SELECT_LAYERS),
        text_num_attention_heads=4,
        text_num_key_value_heads=4,
        text_intermediate_size=64,
        num_layerwise_text_blocks=1,
        num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6),  # sums to the head width, as the real (32, 48, 48) to 128
    )
    pipeline = Krea2Pipeline(
        transformer=transformer,
        vae=tiny_qwen_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        # Krea 2's schedule: the exponential shift growing with the token count, from 256 to 6400 tokens.
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=6400
        ),
        text_encoder_select_layers=TINY_SELECT_LAYERS,
    )
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    # No trigger-word run, as for the tiny Qwen-Image: this random model barely reads its caption (two captions
    # move its prediction by 0.1 %; 0.8 % with the modulation's gain raised tenfold), and a trigger word pulled
    # 0.00-0.03 of the blue-red distance after 150-600 steps at 2e-3 to 1e-2. Real Krea 2 reads captions closely.
    "krea2": TinyModel(build=build_tiny_krea2, learning=LearningRun(steps=150, learning_rate=2e-3)),
}
