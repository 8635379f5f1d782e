"""Chroma1-HD at its published size (1024 px), for bench/gpu.py: each denoiser built from its published
configuration with random weights (the compute is the same as with real ones), the tiny configuration the
tests run the same code on, the variants measured, and the published parameter count the tests check it
against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import VAE_FLUX

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "chroma": {
        "family": "chroma",
        "pipeline": "ChromaPipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {  # Chroma1-HD
            "_class_name": "ChromaTransformer2DModel",
            "approximator_hidden_dim": 5120,
            "approximator_layers": 5,
            "approximator_num_channels": 64,
            "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56],
            "in_channels": 64,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 19,
            "num_single_layers": 38,
            "patch_size": 1,
        },
        "vae": VAE_FLUX,
        "prompts": {"prompt_embeds": (512, 4096), "text_mask": (512,)},
        "published_billions": 8.9,
        "size_tolerance": 0.01,
        "tiny": {
            "resolution": 64,
            "config": {
                "attention_head_dim": 16,
                "axes_dims_rope": [4, 6, 6],
                "num_attention_heads": 2,
                "joint_attention_dim": 32,
                "num_layers": 1,
                "num_single_layers": 1,
                "approximator_num_channels": 16,
                "approximator_hidden_dim": 32,
                "approximator_layers": 1,
            },
            "prompts": {"prompt_embeds": (16, 32), "text_mask": (16,)},
        },
        "variants": [("default", {}), ("no compile", {"compile": "off"}), ("fp8 base", {"quantize_base": "fp8"})],
    },
}
