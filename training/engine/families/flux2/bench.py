"""FLUX.2 klein 4 B and 9 B and FLUX.2 dev at their published sizes (1024 px), for bench/gpu.py: each denoiser
built from its published configuration with random weights (the compute is the same as with real ones), the
tiny configuration the tests run the same code on, the variants measured, and the published parameter count
the tests check it against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import SCHEDULER_FLUX, VAE_FLUX2

# FLUX.2 [klein] 4B; the 9 B and dev differ in width, depth and (dev) the guidance input only.
FLUX2_KLEIN_4B: dict[str, Any] = {
    "family": "flux2-klein",
    "pipeline": "Flux2KleinPipeline",
    "resolution": 1024,
    "denoiser": "transformer",
    "config": {
        "_class_name": "Flux2Transformer2DModel",
        "attention_head_dim": 128,
        "axes_dims_rope": [32, 32, 32, 32],
        "guidance_embeds": False,
        "in_channels": 128,
        "joint_attention_dim": 7680,
        "mlp_ratio": 3.0,
        "num_attention_heads": 24,
        "num_layers": 5,
        "num_single_layers": 20,
        "patch_size": 1,
    },
    "vae": VAE_FLUX2,
    "scheduler": SCHEDULER_FLUX,
    "prompts": {"prompt_embeds": (512, 7680)},
}
TINY_FLUX2: dict[str, Any] = {
    "resolution": 64,
    "config": {
        "attention_head_dim": 32,
        "axes_dims_rope": [8, 8, 8, 8],
        "num_attention_heads": 4,
        "joint_attention_dim": 48,
        "num_layers": 1,
        "num_single_layers": 1,
        "timestep_guidance_channels": 32,
    },
    "prompts": {"prompt_embeds": (16, 48)},
}

# Black Forest Labs announced FLUX.2 klein at 4 B (3.88 B) and 9 B (9.08 B), FLUX.2 dev at 32 B (32.2 B).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "flux2-klein-4b": {
        **FLUX2_KLEIN_4B,
        "published_billions": 4.0,
        "size_tolerance": 0.035,
        "tiny": TINY_FLUX2,
        "variants": [("default", {}), ("no compile", {"compile": "off"}), ("int8 base", {"quantize_base": "int8"})],
    },
    "flux2-klein-9b": {
        **FLUX2_KLEIN_4B,
        "config": {
            **FLUX2_KLEIN_4B["config"],
            "joint_attention_dim": 12288,
            "num_attention_heads": 32,
            "num_layers": 8,
            "num_single_layers": 24,
        },
        "prompts": {"prompt_embeds": (512, 12288)},
        "published_billions": 9.0,
        "size_tolerance": 0.01,
        "tiny": TINY_FLUX2,
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("int8 base", {"quantize_base": "int8"}),
            ("nf4 base + 12 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 12}),
        ],
    },
    # FLUX.2 [dev]: 8 double and 48 single blocks, guidance-distilled, reading three depths of Mistral Small
    # 3.1 (3 x 5120).
    "flux2-dev": {
        **FLUX2_KLEIN_4B,
        "family": "flux2",
        "pipeline": "Flux2Pipeline",
        "config": {
            **FLUX2_KLEIN_4B["config"],
            "guidance_embeds": True,
            "joint_attention_dim": 15360,
            "num_attention_heads": 48,
            "num_layers": 8,
            "num_single_layers": 48,
        },
        "prompts": {"prompt_embeds": (512, 15360)},
        "published_billions": 32.0,
        "size_tolerance": 0.01,
        "tiny": {**TINY_FLUX2, "config": {**TINY_FLUX2["config"], "guidance_embeds": True}},
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
            ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
            ("nf4 base + 28 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 28}),
        ],
    },
}
# Edit rows: one reference image a pair, its tokens beside the target's (twice the image tokens).
ARCHITECTURES["flux2-klein-9b edit"] = {
    **ARCHITECTURES["flux2-klein-9b"],
    "sources": 1,
    "variants": [("default", {}), ("no compile", {"compile": "off"}), ("int8 base", {"quantize_base": "int8"})],
}
ARCHITECTURES["flux2-dev edit"] = {
    **ARCHITECTURES["flux2-dev"],
    "sources": 1,
    "variants": [
        ("default", {}),
        ("no compile", {"compile": "off"}),
        ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
    ],
}
