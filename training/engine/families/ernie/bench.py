"""ERNIE-Image at its published size (1024 px), for bench/gpu.py: the denoiser built from its published
configuration with random weights (the compute is the same as with real ones), the tiny configuration the
tests run the same code on, the variants measured, and the published parameter count the tests check it
against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import VAE_FLUX2

# Baidu published ERNIE-Image as an 8 B DiT (its configuration counts 8.03 B); baidu/ERNIE-Image
# transformer/config.json (ERNIE-Image-Turbo shares it).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "ernie-image": {
        "family": "ernie-image",
        "pipeline": "ErnieImagePipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "ErnieImageTransformer2DModel",
            "eps": 1e-06,
            "ffn_hidden_size": 12288,
            "hidden_size": 4096,
            "in_channels": 128,
            "num_attention_heads": 32,
            "num_layers": 36,
            "out_channels": 128,
            "patch_size": 1,
            "qk_layernorm": True,
            "rope_axes_dim": [32, 48, 48],
            "rope_theta": 256,
            "text_in_dim": 3072,
        },
        "vae": VAE_FLUX2,
        "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 4.0, "use_dynamic_shifting": False},
        # Ministral 3's 3072-wide hidden states, as long as the longest caption training keeps.
        "prompts": {"prompt_embeds": (512, 3072), "text_mask": (512,)},
        "published_billions": 8.0,
        "size_tolerance": 0.01,
        "tiny": {
            "resolution": 64,
            "config": {
                "hidden_size": 64,
                "num_attention_heads": 2,
                "num_layers": 1,
                "ffn_hidden_size": 128,
                "text_in_dim": 32,
                "rope_axes_dim": [8, 12, 12],
            },
            "prompts": {"prompt_embeds": (16, 32), "text_mask": (16,)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("int8 base", {"quantize_base": "int8"}),
            ("nf4 base + 18 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 18}),
        ],
    },
}
