"""Qwen-Image at its published size (1024 px), for bench/gpu.py: each denoiser built from its published
configuration with random weights (the compute is the same as with real ones), the tiny configuration the
tests run the same code on, the variants measured, and the published parameter count the tests check it
against."""

from __future__ import annotations

from typing import Any

# Alibaba announced Qwen-Image at 20 B (its configuration counts 20.4 B).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwenimage": {
        "family": "qwenimage",
        "pipeline": "QwenImagePipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {  # Qwen-Image (and -Edit: the same transformer)
            "_class_name": "QwenImageTransformer2DModel",
            "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56],
            "in_channels": 64,
            "joint_attention_dim": 3584,
            "num_attention_heads": 24,
            "num_layers": 60,
            "out_channels": 16,
            "patch_size": 2,
        },
        "vae": {
            "_class_name": "AutoencoderKLQwenImage",
            "base_dim": 96,
            "z_dim": 16,
            "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 2,
            "temperal_downsample": [False, True, True],
            "latent_channels": 16,
        },
        "scheduler": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 0.9,
            "base_image_seq_len": 256,
            "max_image_seq_len": 8192,
            "shift": 1.0,
        },
        "prompts": {"prompt_embeds": (512, 3584), "text_mask": (512,)},
        "published_billions": 20.0,
        "size_tolerance": 0.025,
        "tiny": {
            "resolution": 64,
            "config": {
                "attention_head_dim": 16,
                "axes_dims_rope": [4, 6, 6],
                "num_attention_heads": 2,
                "joint_attention_dim": 32,
                "num_layers": 1,
            },
            "prompts": {"prompt_embeds": (16, 32), "text_mask": (16,)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("fp8 base", {"quantize_base": "fp8"}),
            ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
            ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
            ("nf4 base + 30 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 30}),
            ("bf16 base + 45 blocks swapped", {"swap_blocks": 45}),
        ],
    },
}
