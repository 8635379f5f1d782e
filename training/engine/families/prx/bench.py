"""PRX at its published size (1024 px), for bench/gpu.py: the denoiser built from its published configuration
with random weights (the compute is the same as with real ones), the tiny configuration the tests run the same
code on, the variants measured, and the published parameter count the tests check it against."""

from __future__ import annotations

from typing import Any

from training.engine.testing.published import VAE_FLUX

# Photoroom published PRX as a 1.3 B transformer; the configuration diffusers' conversion script writes for the
# FLUX.1-VAE models (scripts/convert_prx_to_diffusers.py, PRXFlux) counts 1.17 B. The published folders' own
# configurations could not be read here, hence the wide tolerance.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "prx": {
        "family": "prx",
        "pipeline": "PRXPipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "PRXTransformer2DModel",
            "in_channels": 16,
            "patch_size": 2,
            "context_in_dim": 2304,
            "hidden_size": 1792,
            "mlp_ratio": 3.5,
            "num_heads": 28,
            "depth": 16,
            "axes_dim": [32, 32],
            "theta": 10000,
            "time_factor": 1000.0,
            "time_max_period": 10000,
        },
        "vae": VAE_FLUX,
        "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
        # T5Gemma 2B's 2304-wide encoder states, padded to the tokenizer's 256.
        "prompts": {"prompt_embeds": (256, 2304), "text_mask": (256,)},
        "published_billions": 1.3,
        "size_tolerance": 0.11,
        "tiny": {
            "resolution": 64,
            "config": {
                "hidden_size": 64,
                "num_heads": 4,
                "depth": 1,
                "context_in_dim": 32,
                "axes_dim": [8, 8],
                "mlp_ratio": 2.0,
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
