"""A tiny Qwen-Image 2.1 model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from training.engine.testing import FLOW_LOSS_DROP, LearningRun, TinyModel
from training.engine.testing.models import MOD_GAIN, calibration_pixels, save_pipeline, staging_folder
from training.engine.testing.tokenizers import QWEN_VISION_TOKENS, write_qwen_tokenizer

# Qwen3-VL's chat template in short: a message's content is text, or a list of text and image parts (the pipeline
# counts the system turn's tokens through it).
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LATENT_CHANNELS = 16  # the real VAE's 64, narrowed


def tiny_qwen21_vae() -> Any:
    """Qwen-Image 2.1's RGBA VAE, small: five levels (16x, as the pipeline requires), 16 latent channels, its
    posterior narrowed and its latents spread as a trained one's, with per-channel `latents_mean`/`latents_std`
    measured on opaque images (as tiny_qwen_vae does for Qwen-Image's)."""
    import torch
    from diffusers import AutoencoderKLQwenImage21

    z = LATENT_CHANNELS
    vae: Any = AutoencoderKLQwenImage21(
        base_dim=8, decoder_base_dim=8, z_dim=z, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
        latents_mean=[0.0] * z, latents_std=[1.0] * z,
    )  # fmt: skip
    pixels = calibration_pixels()
    rgba = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=1).unsqueeze(2)
    with torch.no_grad():
        vae.quant_conv.weight[z:] = 0.0
        vae.quant_conv.bias[z:] = -12.0
        spread = float(vae.encode(rgba).latent_dist.mean.std())
        vae.quant_conv.weight[:z] /= spread
        vae.quant_conv.bias[:z] /= spread
        latents = vae.encode(rgba).latent_dist.mean
    vae.register_to_config(
        latents_mean=[round(float(v), 5) for v in latents.mean(dim=(0, 2, 3, 4))],
        latents_std=[round(float(v), 5) for v in latents.std(dim=(0, 2, 3, 4))],
    )
    return vae


def build_tiny_qwenimage21(out_dir: Path, *, seed: int = 0) -> Path:
    """A QwenImage21Pipeline-shaped model: a two-block single-stream transformer (block-causal, text modulated as
    at time 0), the tiny RGBA VAE above, and a two-layer Qwen3-VL (two-layer vision tower, 16 px patches merged
    2x2, deepstack at layer 0) behind the byte-level Qwen tokenizer with Qwen-VL's image markers, read through
    the real Qwen2-VL image processor with Qwen3-VL's published settings; the processor is saved under the stock
    Qwen3VLProcessor's name."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline, QwenImage21Transformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from training.engine.vl_processors import Qwen3VLProcessorWithoutVideo, stock_names

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    folder = staging / "processor-tokenizer"
    vocab_size = write_qwen_tokenizer(folder, vision=True)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    ids = {
        token: int(tokenizer.convert_tokens_to_ids(token))
        for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *QWEN_VISION_TOKENS)
    }
    text_config = {
        "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 3, 3],
                            "mrope_interleaved": True},
        "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
    }  # fmt: skip
    vision_config = {
        "depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 32,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "deepstack_visual_indexes": [0],
        "num_position_embeddings": 64,
    }  # fmt: skip
    text_encoder = Qwen3VLForConditionalGeneration(
        Qwen3VLConfig(
            text_config=text_config,
            vision_config=vision_config,
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
    ).eval()
    # Qwen3-VL's published image settings: 16 px patches merged 2x2, mean and std 0.5, 64K to 16M pixels.
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        size={"shortest_edge": 65536, "longest_edge": 16777216},
    )  # fmt: skip
    processor = Qwen3VLProcessorWithoutVideo(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=VL_CHAT_TEMPLATE
    )
    transformer: Any = QwenImage21Transformer2DModel(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,  # 64 wide, as the tiny Qwen-Image's
        context_in_dim=32,  # the text encoder's width
        axes_dims_rope=(4, 6, 6),
    )
    with torch.no_grad():
        # The blocks' shared modulation, raised as Qwen-Image's tiny model's (its tiny.py says why): at this width
        # the default initialisation leaves every block's gates too small for the blocks to reach the output.
        transformer.modulation[1].weight.mul_(MOD_GAIN)
    pipeline = QwenImage21Pipeline(
        transformer=transformer,
        vae=tiny_qwen21_vae(),
        text_encoder=text_encoder,
        processor=processor,
        # The pipeline's own shift defaults (calculate_shift's 0.5 to 1.15 over 256 to 4096 tokens).
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
        ),
    )
    shutil.rmtree(folder)
    return save_pipeline(pipeline, staging, out_dir, finish=stock_names)


TINY_MODELS = {
    "qwenimage21": TinyModel(
        build=build_tiny_qwenimage21,
        learning=LearningRun(steps=150, learning_rate=2e-3, loss_drop=FLOW_LOSS_DROP),
    ),
}
