"""Published configurations of the VAEs and schedulers the real-size benchmarks (bench/gpu.py) build beside
each family's denoiser (the families' own bench.py modules): facts from the models' config.json files."""

from __future__ import annotations

from typing import Any

SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
VAE_SD = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "scaling_factor": 0.18215,
}
VAE_FLUX = {  # FLUX.1's (Chroma and Z-Image use it too)
    **VAE_SD,
    "latent_channels": 16,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
VAE_SD_3 = {
    **VAE_SD,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
VAE_FLUX2 = {  # FLUX.2's: 32 latent channels, normalised per 2x2 patch channel by its BatchNorm statistics
    **VAE_SD,
    "_class_name": "AutoencoderKLFlux2",
    "latent_channels": 32,
    "batch_norm_eps": 1e-4,
    "patch_size": [2, 2],
}
SCHEDULER_SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
SCHEDULER_FLUX = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "shift": 3.0,
}
