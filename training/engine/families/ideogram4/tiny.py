"""A tiny Ideogram 4 model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.engine.families.flux2.tiny import flux2_vae
from training.engine.families.ideogram4.family import pack
from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import calibration_pixels, save_pipeline, staging_folder, unit_scale_embeddings
from training.engine.testing.tokenizers import write_qwen_tokenizer

# Qwen3-VL's chat layout, whose messages carry lists of {"type": "text", "text": ...} parts (as
# Ideogram4Pipeline formats a prompt) or plain text.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ENCODER_LAYERS = 36  # Ideogram4Pipeline reads fixed decoder layers, up to the 36th of Qwen3-VL-8B


def build_tiny_ideogram4(out_dir: Path, *, seed: int = 0) -> Path:
    """An Ideogram-4-shaped pipeline: two-layer conditional and unconditional DiTs over 128-channel patch tokens,
    reading the 13 decoder layers the pipeline taps of a 36-layer Qwen3-VL (16 wide) behind the byte-level Qwen
    tokenizer with Qwen3-VL's chat template, and the tiny FLUX.2 VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Ideogram4Pipeline, Ideogram4Transformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3VLConfig, Qwen3VLModel

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_qwen_tokenizer(staging / "tokenizer")
    config_path = staging / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = QWEN_VL_CHAT_TEMPLATE
    config_path.write_text(json.dumps(config), encoding="utf-8")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(staging / "tokenizer"))
    special = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in ("<|endoftext|>", "<|im_end|>")}
    width = 16
    text_encoder = Qwen3VLModel(
        Qwen3VLConfig(
            text_config={
                "vocab_size": vocab_size,
                "hidden_size": width,
                "intermediate_size": 24,
                "num_hidden_layers": ENCODER_LAYERS,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "head_dim": 8,
                "max_position_embeddings": 4096,
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
            image_token_id=special["<|endoftext|>"],
            video_token_id=special["<|endoftext|>"],
            vision_start_token_id=special["<|endoftext|>"],
            vision_end_token_id=special["<|endoftext|>"],
        )
    ).eval()
    unit_scale_embeddings(text_encoder)  # the transformer reads the layers through plain Linears (see FLUX.2)
    taps = 13  # the decoder layers the pipeline interleaves per token

    def transformer() -> Any:
        return Ideogram4Transformer2DModel(
            in_channels=128,  # 2x2 patches of 32 latent channels
            num_layers=2,
            attention_head_dim=32,  # 4 x 32 = 128 wide, as wide as a patch token (see the tiny FLUX)
            num_attention_heads=4,
            intermediate_size=256,
            adaln_dim=32,
            llm_features_dim=taps * width,
            mrope_section=(6, 5, 5),  # sums to half the head width, as the real (24, 20, 20) to 128
        )

    conditional = transformer()
    # The real pair is trained apart but predicts alike (the guidance weighs the unconditional one by 1 - g, -6):
    # the tiny one starts as a copy of the conditional model's weights, where a second random model would make
    # every guided generation noise.
    unconditional = transformer()
    unconditional.load_state_dict(conditional.state_dict())
    vae = flux2_vae()
    with torch.no_grad():
        # The BatchNorm statistics measured again in Ideogram's token order, (row, column, channel) within a 2x2
        # patch, which its pipeline normalises with (the tiny FLUX.2 VAE's are in FLUX.2's channel-first order).
        tokens = pack(vae.encode(calibration_pixels()).latent_dist.mean).flatten(0, 1)
        vae.bn.running_mean.copy_(tokens.mean(dim=0))
        vae.bn.running_var.copy_(tokens.var(dim=0))
    pipeline = Ideogram4Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=conditional,
        unconditional_transformer=unconditional,
    )
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    # No trigger-word run, as for the tiny Qwen-Image and Krea 2: this random model barely reads its caption (two
    # captions move its prediction by 0.6 %), and a trigger word pulled 0.00 after 150-300 steps at 2e-3 to 1e-2.
    "ideogram4": TinyModel(build=build_tiny_ideogram4, learning=LearningRun(steps=150, learning_rate=2e-3)),
}
