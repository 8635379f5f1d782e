"""Ideogram 4 at 1024 px, for bench/gpu.py: the conditional denoiser (the one trained) built from its published
configuration with random weights (the compute is the same as with real ones), the tiny configuration the tests
run the same code on, the variants measured, and the published parameter count the tests check it against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import VAE_FLUX2

# Ideogram announced Ideogram 4 at 9.3 B (each of its two transformers; the configuration counts 9.28 B). The
# configuration is Ideogram4Transformer2DModel's defaults, which match Ideogram's published architecture (4608
# wide, 34 layers, 18 heads, 13 taps of Qwen3-VL-8B's 4096 per token) and ComfyUI's.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "ideogram4": {
        "family": "ideogram4",
        "pipeline": "Ideogram4Pipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "Ideogram4Transformer2DModel",
            "in_channels": 128,
            "num_layers": 34,
            "attention_head_dim": 256,
            "num_attention_heads": 18,
            "intermediate_size": 12288,
            "adaln_dim": 512,
            "llm_features_dim": 53248,
            "rope_theta": 5000000,
            "mrope_section": [24, 20, 20],
            "norm_eps": 1e-05,
        },
        "vae": VAE_FLUX2,
        "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0, "use_dynamic_shifting": False},
        # A caption of 256 tokens (Ideogram's captions are long JSON), each 13 x 4096 features.
        "prompts": {"prompt_embeds": (256, 53248), "text_mask": (256,)},
        "published_billions": 9.3,
        "size_tolerance": 0.01,
        "tiny": {
            "resolution": 64,
            "config": {
                "num_layers": 1,
                "attention_head_dim": 32,
                "num_attention_heads": 4,
                "intermediate_size": 256,
                "adaln_dim": 32,
                "llm_features_dim": 208,
                "mrope_section": [6, 5, 5],
            },
            "prompts": {"prompt_embeds": (16, 208), "text_mask": (16,)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("int8 base", {"quantize_base": "int8"}),
            ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
        ],
    },
}
