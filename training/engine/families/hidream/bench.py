"""HiDream-I1 at its published size (1024 px), for bench/gpu.py: each denoiser built from its published
configuration with random weights (the compute is the same as with real ones), the tiny configuration the
tests run the same code on, the variants measured, and the published parameter count the tests check it
against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import SCHEDULER_SD3, VAE_FLUX

# HiDream.ai announced HiDream-I1 at 17 B (17.1 B).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    # HiDream-I1 (Full; Dev and Fast share the transformer): 16 double- and 32 single-stream blocks with
    # mixture-of-experts feed-forwards; each block reads one of Llama 3.1 8B's 32 layers (the last one for
    # the 16 deepest blocks) beside T5-XXL's tokens, 128 of each.
    "hidream": {
        "family": "hidream",
        "pipeline": "HiDreamImagePipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "HiDreamImageTransformer2DModel",
            "attention_head_dim": 128,
            "axes_dims_rope": [64, 32, 32],
            "caption_channels": [4096, 4096],
            "in_channels": 16,
            "llama_layers": [*range(32), *[31] * 16],
            "max_resolution": [128, 128],
            "num_activated_experts": 2,
            "num_attention_heads": 20,
            "num_layers": 16,
            "num_routed_experts": 4,
            "num_single_layers": 32,
            "out_channels": 16,
            "patch_size": 2,
            "text_emb_dim": 2048,
        },
        "vae": VAE_FLUX,
        "scheduler": SCHEDULER_SD3,  # HiDream-I1-Full's fixed shift of 3.0
        "prompts": {"pooled_prompt_embeds": (2048,), "t5_embeds": (128, 4096), "llama_embeds": (32, 128, 4096)},
        "published_billions": 17.0,
        "size_tolerance": 0.01,
        "tiny": {
            "resolution": 64,
            "config": {
                "attention_head_dim": 16,
                "axes_dims_rope": [8, 4, 4],
                "num_attention_heads": 4,
                "caption_channels": [32, 32],
                "text_emb_dim": 64,
                "num_layers": 1,
                "num_single_layers": 1,
                "llama_layers": [0, 1],
                "max_resolution": [32, 32],
            },
            "prompts": {"pooled_prompt_embeds": (64,), "t5_embeds": (16, 32), "llama_embeds": (2, 16, 32)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("fp8 base", {"quantize_base": "fp8"}),
            ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
            ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
            ("nf4 base + 24 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 24}),
        ],
    },
}
