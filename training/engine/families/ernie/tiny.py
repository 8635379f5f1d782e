"""A tiny ERNIE-Image model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.engine.families.flux2.tiny import flux2_vae
from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import save_pipeline, staging_folder, unit_scale_embeddings
from training.engine.testing.tokenizers import MAX_LLAMA_TOKENS, write_llama_tokenizer


def build_tiny_ernie_image(out_dir: Path, *, seed: int = 0) -> Path:
    """An ERNIE-Image-shaped pipeline: a two-layer single-stream DiT over 128-channel patch tokens, read by a
    three-layer Mistral 3 (whose second-to-last hidden states are the caption) behind a byte-level tokenizer
    that opens every text with a begin token as Mistral's does, and the tiny FLUX.2 VAE."""
    import torch
    from diffusers import ErnieImagePipeline, ErnieImageTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import Mistral3Config, Mistral3Model, MistralConfig, PixtralVisionConfig, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_llama_tokenizer(staging / "tokenizer")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(staging / "tokenizer"))
    width = 32
    text_encoder = Mistral3Model(
        Mistral3Config(
            text_config=MistralConfig(
                vocab_size=vocab_size,
                hidden_size=width,
                intermediate_size=48,
                num_hidden_layers=3,  # hidden_states[-2], the layer the pipeline reads, is a real layer's output
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=MAX_LLAMA_TOKENS,
                bos_token_id=int(tokenizer.bos_token_id),
                eos_token_id=int(tokenizer.eos_token_id),
            ),
            # The vision tower the real encoder carries (and never runs for text), as small as it goes.
            vision_config=PixtralVisionConfig(
                hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=64
            ),
        )
    ).eval()
    unit_scale_embeddings(text_encoder)  # the transformer reads the caption through a plain Linear (see FLUX.2)
    transformer: Any = ErnieImageTransformer2DModel(
        hidden_size=128,  # 4 x 32, as wide as a 128-channel patch token (see the tiny FLUX)
        num_attention_heads=4,
        num_layers=2,
        ffn_hidden_size=256,
        in_channels=128,
        out_channels=128,
        patch_size=1,
        text_in_dim=width,
        rope_axes_dim=(8, 12, 12),  # sums to the head width, as the real (32, 48, 48) to 128
    )
    with torch.no_grad():
        # The model starts its shared modulation and its output layer at zero (an untrained model predicts
        # nothing), where a trained one's are not: left at zero, no adapter in the layers would get a gradient.
        transformer.adaLN_modulation[-1].reset_parameters()
        transformer.final_linear.reset_parameters()
    pipeline = ErnieImagePipeline(
        transformer=transformer,
        vae=flux2_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=4.0, use_dynamic_shifting=False),
    )
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    "ernie-image": TinyModel(
        build=build_tiny_ernie_image,
        learning=LearningRun(steps=150, learning_rate=2e-3),
        # Its caption reaches the image only through the joint attention (no pooled vector), as Chroma's: a
        # trigger word pulled 0.21 at 2e-3 in 150 steps, 0.38 at 5e-3.
        trigger=LearningRun(steps=150, learning_rate=5e-3),
    ),
}
