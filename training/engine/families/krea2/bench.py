"""Krea 2 at its published size (1024 px), for bench/gpu.py: the denoiser built from its published configuration
with random weights (the compute is the same as with real ones), the tiny configuration the tests run the same
code on, the variants measured, and the published parameter count the tests check it against."""

from __future__ import annotations

from typing import Any

from training.engine.families.qwenimage.bench import ARCHITECTURES as QWEN_IMAGE

# Krea announced Krea 2 as a 12 B DiT (its configuration counts 12.8 B; the hub lists 13 B). The transformer's
# configuration is Krea2Transformer2DModel's defaults, which match Krea's reference `single_mmdit_large_wide`
# (6144 wide, 48 heads over 12 key/value heads, 28 layers, 12 text depths of Qwen3-VL-4B's 2560).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "krea2": {
        "family": "krea2",
        "pipeline": "Krea2Pipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "Krea2Transformer2DModel",
            "in_channels": 64,
            "num_layers": 28,
            "attention_head_dim": 128,
            "num_attention_heads": 48,
            "num_key_value_heads": 12,
            "intermediate_size": 16384,
            "timestep_embed_dim": 256,
            "text_hidden_dim": 2560,
            "num_text_layers": 12,
            "text_num_attention_heads": 20,
            "text_num_key_value_heads": 20,
            "text_intermediate_size": 6912,
            "num_layerwise_text_blocks": 2,
            "num_refiner_text_blocks": 2,
            "axes_dims_rope": [32, 48, 48],
            "rope_theta": 1000.0,
            "norm_eps": 1e-05,
        },
        "vae": QWEN_IMAGE["qwenimage"]["vae"],  # Qwen-Image's VAE
        "scheduler": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "base_image_seq_len": 256,
            "max_image_seq_len": 6400,
        },
        # 512 caption positions, each the encoder's 12 depths of 2560.
        "prompts": {"prompt_embeds": (512, 12, 2560), "text_mask": (512,)},
        "published_billions": 12.0,
        "size_tolerance": 0.07,
        "tiny": {
            "resolution": 64,
            "config": {
                "num_layers": 1,
                "attention_head_dim": 16,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 128,
                "timestep_embed_dim": 32,
                "text_hidden_dim": 32,
                "num_text_layers": 3,
                "text_num_attention_heads": 4,
                "text_num_key_value_heads": 4,
                "text_intermediate_size": 64,
                "num_layerwise_text_blocks": 1,
                "num_refiner_text_blocks": 1,
                "axes_dims_rope": [4, 6, 6],
            },
            "prompts": {"prompt_embeds": (16, 3, 32), "text_mask": (16,)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("int8 base", {"quantize_base": "int8"}),
            ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
            ("nf4 base + 14 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 14}),
        ],
    },
}
