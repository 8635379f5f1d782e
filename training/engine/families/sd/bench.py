"""SD 1.5 (512 px) and SDXL (1024 px) at their published sizes, for bench/gpu.py: each denoiser built from its
published configuration with random weights (the compute is the same as with real ones), the tiny
configuration the tests run the same code on, the variants measured, and the published parameter count the
tests check it against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import VAE_SD

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "sd15": {
        "pipeline": "StableDiffusionPipeline",
        "resolution": 512,
        "denoiser": "unet",
        "config": {
            "_class_name": "UNet2DConditionModel",
            "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 2,
            "sample_size": 64,
        },
        "vae": VAE_SD,
        "prompts": {"prompt_embeds": (77, 768)},
        "family": "sd15",
        "published_billions": 0.86,
        "size_tolerance": 0.01,
        "targets": {"seconds_per_step": 0.07},
        "tiny": {
            "resolution": 64,
            "config": {
                "block_out_channels": [32, 64, 64, 64],
                "cross_attention_dim": 32,
                "attention_head_dim": 4,
                "norm_num_groups": 32,
                "sample_size": 8,
            },
            "prompts": {"prompt_embeds": (77, 32)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("no channels-last", {"channels_last": False}),
            ("eager attention", {"attention": "eager"}),
            ("unfused AdamW", {"fused_optimizer": False}),
        ],
    },
    "sdxl": {
        "pipeline": "StableDiffusionXLPipeline",
        "resolution": 1024,
        "denoiser": "unet",
        "config": {
            "_class_name": "UNet2DConditionModel",
            "addition_embed_type": "text_time",
            "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280],
            "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 2,
            "projection_class_embeddings_input_dim": 2816,
            "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10],
            "use_linear_projection": True,
        },
        "vae": {**VAE_SD, "scaling_factor": 0.13025},
        "prompts": {"prompt_embeds": (77, 2048), "pooled_prompt_embeds": (1280,)},
        "family": "sdxl",
        "published_billions": 2.57,
        "size_tolerance": 0.01,
        "targets": {"seconds_per_step": 0.2},
        "tiny": {
            "resolution": 64,
            "config": {
                "block_out_channels": [32, 64, 64],
                "cross_attention_dim": 64,
                "attention_head_dim": [2, 4, 4],
                "transformer_layers_per_block": [1, 1, 1],
                "addition_time_embed_dim": 8,
                "projection_class_embeddings_input_dim": 80,
                "sample_size": 8,
                "norm_num_groups": 32,
            },
            "prompts": {"prompt_embeds": (77, 64), "pooled_prompt_embeds": (32,)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("gradient checkpointing", {"gradient_checkpointing": True}),
        ],
    },
}
