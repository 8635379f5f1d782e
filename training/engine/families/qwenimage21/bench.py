"""Qwen-Image 2.1 at its published size (1024 px), for bench/gpu.py: the denoiser built from its published
configuration (diffusers' QwenImage21Transformer2DModel defaults, as Qwen's transformer/config.json has them)
with random weights, the tiny configuration the tests run the same code on, the variants measured, and the
published parameter count the tests check it against."""

from __future__ import annotations

from typing import Any

# Qwen published Qwen-Image 2.1 as a 7 B model (its configuration counts 7.12 B).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwenimage21": {
        "family": "qwenimage21",
        "pipeline": "QwenImage21Pipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "QwenImage21Transformer2DModel",
            "patch_size": 1,
            "in_channels": 64,
            "out_channels": 64,
            "num_layers": 32,
            "attention_head_dim": 128,
            "num_attention_heads": 32,
            "context_in_dim": 4096,
            "mlp_ratio": 3,
            "axes_dims_rope": [16, 56, 56],
            "causal_condition": True,
        },
        "vae": {
            "_class_name": "AutoencoderKLQwenImage21",
            "z_dim": 64,
            "temperal_downsample": [False, True, True, True],
            "latent_channels": 64,
        },
        "scheduler": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "base_image_seq_len": 256,
            "max_image_seq_len": 4096,
        },
        # Qwen3-VL-8B's 4096-wide states for about 64 caption tokens past the system turn.
        "prompts": {"prompt_embeds": (64, 4096), "text_mask": (64,)},
        "published_billions": 7.0,
        "size_tolerance": 0.025,
        "tiny": {
            "resolution": 64,
            "config": {  # the published 64 latent channels (the synthetic latents have the VAE's)
                "num_layers": 1,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "context_in_dim": 32,
                "axes_dims_rope": [4, 6, 6],
            },
            "prompts": {"prompt_embeds": (16, 32), "text_mask": (16,)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("int8 base", {"quantize_base": "int8"}),
            ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
        ],
    },
}
