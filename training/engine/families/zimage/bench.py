"""Z-Image at its published size (1024 px), for bench/gpu.py: each denoiser built from its published
configuration with random weights (the compute is the same as with real ones), the tiny configuration the
tests run the same code on, the variants measured, and the published parameter count the tests check it
against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import SCHEDULER_SD3, VAE_FLUX

# Tongyi announced Z-Image at 6 B (its configuration counts 6.15 B).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "zimage": {
        "family": "zimage",
        "pipeline": "ZImagePipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {  # Z-Image-Turbo
            "_class_name": "ZImageTransformer2DModel",
            "all_patch_size": [2],
            "all_f_patch_size": [1],
            "axes_dims": [32, 48, 48],
            "axes_lens": [1024, 512, 512],
            "cap_feat_dim": 2560,
            "dim": 3840,
            "in_channels": 16,
            "n_heads": 30,
            "n_kv_heads": 30,
            "n_layers": 30,
            "n_refiner_layers": 2,
        },
        "vae": VAE_FLUX,
        "scheduler": SCHEDULER_SD3,  # a fixed shift of 3.0, as Z-Image's scheduler
        # Every one of the 512 caption positions kept: the longest caption the pipeline feeds.
        "prompts": {"prompt_embeds": (512, 2560), "text_mask": (512,)},
        "published_billions": 6.0,
        "size_tolerance": 0.03,
        "tiny": {
            "resolution": 64,
            "config": {
                "dim": 64,
                "n_layers": 2,
                "n_refiner_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 2,
                "cap_feat_dim": 32,
                "axes_dims": [8, 12, 12],
                "axes_lens": [1024, 64, 64],
            },
            "prompts": {"prompt_embeds": (16, 32), "text_mask": (16,)},
        },
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("gradient checkpointing", {"gradient_checkpointing": True}),
        ],
    },
}
