"""SD 3.5 large and medium at their published sizes (1024 px), for bench/gpu.py: each denoiser built from its
published configuration with random weights (the compute is the same as with real ones), the tiny
configuration the tests run the same code on, the variants measured, and the published parameter count the
tests check it against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import SCHEDULER_SD3, VAE_SD_3

TINY_SD3: dict[str, Any] = {
    "resolution": 64,
    "config": {
        "attention_head_dim": 16,
        "num_attention_heads": 4,
        "num_layers": 2,
        "caption_projection_dim": 64,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "pos_embed_max_size": 32,
    },
    "prompts": {"prompt_embeds": (16, 32), "pooled_prompt_embeds": (32,)},
}

# Stability announced SD 3.5 large at 8.1 B and medium at 2.5 B, counting the fixed positional table (a
# buffer here) with the weights.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "sd35-large": {
        "family": "sd3",
        "pipeline": "StableDiffusion3Pipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "SD3Transformer2DModel",
            "attention_head_dim": 64,
            "caption_projection_dim": 2432,
            "in_channels": 16,
            "joint_attention_dim": 4096,
            "num_attention_heads": 38,
            "num_layers": 38,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 192,
            "qk_norm": "rms_norm",
            "sample_size": 128,
        },
        "vae": {**VAE_SD_3, "latent_channels": 16},
        "scheduler": SCHEDULER_SD3,
        # Two CLIPs' 77 tokens (padded to T5's width) and T5's 256, as StableDiffusion3Pipeline builds them.
        "prompts": {"prompt_embeds": (333, 4096), "pooled_prompt_embeds": (2048,)},
        "published_billions": 8.1,
        "size_tolerance": 0.015,
        "tiny": TINY_SD3,
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("fp8 base", {"quantize_base": "fp8"}),
            ("gradient checkpointing", {"gradient_checkpointing": True}),
        ],
    },
    "sd35-medium": {
        "family": "sd3",
        "pipeline": "StableDiffusion3Pipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "SD3Transformer2DModel",
            "attention_head_dim": 64,
            "caption_projection_dim": 1536,
            "dual_attention_layers": list(range(13)),
            "in_channels": 16,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 24,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 384,
            "qk_norm": "rms_norm",
            "sample_size": 128,
        },
        "vae": {**VAE_SD_3, "latent_channels": 16},
        "scheduler": SCHEDULER_SD3,
        "prompts": {"prompt_embeds": (333, 4096), "pooled_prompt_embeds": (2048,)},
        "published_billions": 2.5,
        "size_tolerance": 0.015,
        "tiny": {**TINY_SD3, "config": {**TINY_SD3["config"], "dual_attention_layers": [0]}},
        "variants": [("default", {}), ("no compile", {"compile": "off"})],
    },
}
