"""FLUX.1 [dev] at its published size (1024 px), for bench/gpu.py: each denoiser built from its published
configuration with random weights (the compute is the same as with real ones), the tiny configuration the
tests run the same code on, the variants measured, and the published parameter count the tests check it
against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import VAE_FLUX

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "flux": {
        "pipeline": "FluxPipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "FluxTransformer2DModel",
            "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56],
            "guidance_embeds": True,
            "in_channels": 64,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 19,
            "num_single_layers": 38,
            "patch_size": 1,
            "pooled_projection_dim": 768,
        },
        "vae": VAE_FLUX,
        "prompts": {"prompt_embeds": (512, 4096), "pooled_prompt_embeds": (768,)},
        "family": "flux",
        "published_billions": 11.9,
        "size_tolerance": 0.01,
        "targets": {"seconds_per_step": 0.5, "peak_memory_gb": 40.0, "quantized_peak_memory_gb": 24.0},
        "tiny": {
            "resolution": 64,
            "config": {
                "attention_head_dim": 16,
                "axes_dims_rope": [4, 6, 6],
                "num_attention_heads": 2,
                "joint_attention_dim": 32,
                "num_layers": 1,
                "num_single_layers": 1,
                "pooled_projection_dim": 32,
            },
            "prompts": {"prompt_embeds": (16, 32), "pooled_prompt_embeds": (32,)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("fp8 base", {"quantize_base": "fp8"}),
            ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
            ("int8 base + checkpointing", {"quantize_base": "int8", "gradient_checkpointing": True}),
            ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
            ("nf4 base + 20 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 20}),
        ],
    },
}
