"""Real-size GPU benchmarks: SD 1.5 (512 px), SDXL (1024 px), FLUX.1-dev, SD 3.5 large and medium,
Chroma1-HD, Z-Image, Qwen-Image, FLUX.2 klein 4 B and 9 B, FLUX.2 dev and HiDream-I1 (1024 px) denoisers built
from their published configurations with random weights (the compute is the same as with real ones),
LoRA rank 16, batch 1, trained by the engine's own step (`trainer.train_step`): seconds per step, peak
GPU memory, and model FLOPs utilisation against the matmul rate measured on the same GPU.

Runs only where CUDA is available; `--tiny` runs the same code on small configs (on a CPU too), which
is how the test suite keeps this file working on machines without a GPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

SCHEDULER = {
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
# The published configurations of the denoisers (facts from their model cards' config.json).
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
    },
    "flux": {
        "pipeline": "FluxPipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "FluxTransformer2DModel",
            "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56],
            "guidance_embeds": True,
            "in_channels": 64,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 19,
            "num_single_layers": 38,
            "patch_size": 1,
            "pooled_projection_dim": 768,
        },
        "vae": VAE_FLUX,
        "prompts": {"prompt_embeds": (512, 4096), "pooled_prompt_embeds": (768,)},
    },
    "sd35-large": {
        "family": "sd3",
        "pipeline": "StableDiffusion3Pipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "SD3Transformer2DModel",
            "attention_head_dim": 64,
            "caption_projection_dim": 2432,
            "in_channels": 16,
            "joint_attention_dim": 4096,
            "num_attention_heads": 38,
            "num_layers": 38,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 192,
            "qk_norm": "rms_norm",
            "sample_size": 128,
        },
        "vae": {**VAE_SD_3, "latent_channels": 16},
        "scheduler": SCHEDULER_SD3,
        # Two CLIPs' 77 tokens (padded to T5's width) and T5's 256, as StableDiffusion3Pipeline builds them.
        "prompts": {"prompt_embeds": (333, 4096), "pooled_prompt_embeds": (2048,)},
    },
    "sd35-medium": {
        "family": "sd3",
        "pipeline": "StableDiffusion3Pipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {
            "_class_name": "SD3Transformer2DModel",
            "attention_head_dim": 64,
            "caption_projection_dim": 1536,
            "dual_attention_layers": list(range(13)),
            "in_channels": 16,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 24,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 384,
            "qk_norm": "rms_norm",
            "sample_size": 128,
        },
        "vae": {**VAE_SD_3, "latent_channels": 16},
        "scheduler": SCHEDULER_SD3,
        "prompts": {"prompt_embeds": (333, 4096), "pooled_prompt_embeds": (2048,)},
    },
    "chroma": {
        "family": "chroma",
        "pipeline": "ChromaPipeline",
        "resolution": 1024,
        "denoiser": "transformer",
        "config": {  # Chroma1-HD
            "_class_name": "ChromaTransformer2DModel",
            "approximator_hidden_dim": 5120,
            "approximator_layers": 5,
            "approximator_num_channels": 64,
            "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56],
            "in_channels": 64,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 19,
            "num_single_layers": 38,
            "patch_size": 1,
        },
        "vae": VAE_FLUX,
        "prompts": {"prompt_embeds": (512, 4096), "text_mask": (512,)},
    },
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
    },
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
    },
    # FLUX.2 [klein]: the transformer reads three of its Qwen3 encoder's depths side by side (3 x 2560 for
    # the 4 B, whose encoder is Qwen3-4B; 3 x 4096 for the 9 B, Qwen3-8B), 512 padded caption positions.
    "flux2-klein-4b": FLUX2_KLEIN_4B,
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
    },
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
    },
}
TINY_FLUX2: dict[str, Any] = {
    "resolution": 64,
    "config": {"attention_head_dim": 32, "axes_dims_rope": [8, 8, 8, 8], "num_attention_heads": 4,
               "joint_attention_dim": 48, "num_layers": 1, "num_single_layers": 1, "timestep_guidance_channels": 32},
    "prompts": {"prompt_embeds": (16, 48)},
}  # fmt: skip
TINY_SD3: dict[str, Any] = {
    "resolution": 64,
    "config": {
        "attention_head_dim": 16,
        "num_attention_heads": 4,
        "num_layers": 2,
        "caption_projection_dim": 64,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "pos_embed_max_size": 32,
    },
    "prompts": {"prompt_embeds": (16, 32), "pooled_prompt_embeds": (32,)},
}
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "sd15": {
        "resolution": 64,
        "config": {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "attention_head_dim": 4,
                   "norm_num_groups": 32, "sample_size": 8},
        "prompts": {"prompt_embeds": (77, 32)},
    },
    "sdxl": {
        "resolution": 64,
        "config": {"block_out_channels": [32, 64, 64], "cross_attention_dim": 64, "attention_head_dim": [2, 4, 4],
                   "transformer_layers_per_block": [1, 1, 1], "addition_time_embed_dim": 8,
                   "projection_class_embeddings_input_dim": 80, "sample_size": 8, "norm_num_groups": 32},
        "prompts": {"prompt_embeds": (77, 64), "pooled_prompt_embeds": (32,)},
    },
    "flux": {
        "resolution": 64,
        "config": {"attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "num_attention_heads": 2,
                   "joint_attention_dim": 32, "num_layers": 1, "num_single_layers": 1, "pooled_projection_dim": 32},
        "prompts": {"prompt_embeds": (16, 32), "pooled_prompt_embeds": (32,)},
    },
    "chroma": {
        "resolution": 64,
        "config": {"attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "num_attention_heads": 2,
                   "joint_attention_dim": 32, "num_layers": 1, "num_single_layers": 1,
                   "approximator_num_channels": 16, "approximator_hidden_dim": 32, "approximator_layers": 1},
        "prompts": {"prompt_embeds": (16, 32), "text_mask": (16,)},
    },
    "zimage": {
        "resolution": 64,
        "config": {"dim": 64, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2,
                   "cap_feat_dim": 32, "axes_dims": [8, 12, 12], "axes_lens": [1024, 64, 64]},
        "prompts": {"prompt_embeds": (16, 32), "text_mask": (16,)},
    },
    "qwenimage": {
        "resolution": 64,
        "config": {"attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "num_attention_heads": 2,
                   "joint_attention_dim": 32, "num_layers": 1},
        "prompts": {"prompt_embeds": (16, 32), "text_mask": (16,)},
    },
    "hidream": {
        "resolution": 64,
        "config": {"attention_head_dim": 16, "axes_dims_rope": [8, 4, 4], "num_attention_heads": 4,
                   "caption_channels": [32, 32], "text_emb_dim": 64, "num_layers": 1, "num_single_layers": 1,
                   "llama_layers": [0, 1], "max_resolution": [32, 32]},
        "prompts": {"pooled_prompt_embeds": (64,), "t5_embeds": (16, 32), "llama_embeds": (2, 16, 32)},
    },
    "flux2-klein-4b": TINY_FLUX2,
    "flux2-klein-9b": TINY_FLUX2,
    "flux2-dev": {**TINY_FLUX2, "config": {**TINY_FLUX2["config"], "guidance_embeds": True}},
    "sd35-large": TINY_SD3,
    "sd35-medium": {**TINY_SD3, "config": {**TINY_SD3["config"], "dual_attention_layers": [0]}},
}  # fmt: skip
# Seconds per step on an H100; SD 3.5 has no target yet (no GPU has measured it here).
TARGETS = {"sd15": 0.07, "sdxl": 0.2, "flux": 0.5}
FLUX_MEMORY_TARGET_GB = 40.0
FLUX_QUANTIZED_MEMORY_TARGET_GB = 24.0


def architecture(name: str, *, tiny: bool) -> dict[str, Any]:
    spec = json.loads(json.dumps(ARCHITECTURES[name]))
    if tiny:
        override = TINY_OVERRIDES[name]
        spec["resolution"] = override["resolution"]
        spec["config"].update(override["config"])
        spec["prompts"] = {key: list(value) for key, value in override["prompts"].items()}
    return spec


def write_config_folder(folder: Path, name: str, spec: dict[str, Any]) -> Path:
    """A diffusers folder with the configurations only (no weights): what the family adapters read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": spec["pipeline"]}), encoding="utf-8")
    for sub, config, file_name in (
        (spec["denoiser"], spec["config"], "config.json"),
        ("vae", spec["vae"], "config.json"),
        ("scheduler", spec.get("scheduler", SCHEDULER), "scheduler_config.json"),
    ):
        (folder / sub).mkdir(exist_ok=True)
        (folder / sub / file_name).write_text(json.dumps(config), encoding="utf-8")
    if spec["vae"].get("_class_name") == "AutoencoderKLFlux2":
        # The one piece of the VAE's weights the trainer reads: the BatchNorm statistics it normalises
        # latents with (neutral ones here: the latents are synthetic).
        from safetensors.torch import save_file

        channels = 4 * int(spec["vae"]["latent_channels"])
        save_file(
            {"bn.running_mean": torch.zeros(channels), "bn.running_var": torch.ones(channels)},
            str(folder / "vae" / "diffusion_pytorch_model.safetensors"),
        )
    return folder


def random_denoiser(spec: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The denoiser with random weights, created directly on the device in its training dtype."""
    import diffusers

    cls = getattr(diffusers, spec["config"]["_class_name"])
    config = {k: v for k, v in spec["config"].items() if not k.startswith("_")}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def synthetic_cache(spec: dict[str, Any], family: Any, images: int) -> Any:
    """Latents and prompt embeddings of the right shapes, as the caching pass would have made them."""
    from training.engine.trainer import Cache

    side = spec["resolution"] // family.vae_scale()
    channels = spec["vae"]["latent_channels"]
    generator = torch.Generator().manual_seed(0)
    means = [torch.randn((channels, side, side), generator=generator) for _ in range(images)]
    stds = [torch.full((channels, side, side), 0.01) for _ in range(images)]
    prompts = {
        key: torch.randn((images + 1, *shape), generator=generator) * 0.1 for key, shape in spec["prompts"].items()
    }
    return Cache(
        means=means,
        stds=stds,
        flipped_means=None,
        flipped_stds=None,
        source_means=None,
        flipped_source_means=None,
        prompts=prompts,
        caption_rows=list(range(1, images + 1)),
        buckets=[(spec["resolution"], spec["resolution"])] * images,
    )


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 50) -> float:
    """The measured dense matmul rate of this device: the denominator of the utilisation figure."""
    a = torch.randn((size, size), device=device, dtype=dtype)
    b = torch.randn((size, size), device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e12


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(context: Any) -> float:
    """FLOPs of one training step, counted by PyTorch's FLOP counter on a real step."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.engine.trainer import train_step

    with FlopCounterMode(display=False) as counter:
        train_step(context, 0)
    return float(counter.get_total_flops())


def run_one(
    name: str,
    *,
    folder: Path,
    device: torch.device,
    steps: int,
    warmup: int,
    tiny: bool,
    options: dict[str, Any],
    peak_tflops: float | None,
) -> dict[str, Any]:
    from diffusers.optimization import get_scheduler

    from training.engine import TrainingSpec
    from training.engine.data import EpochSampler
    from training.engine.families import family_class
    from training.engine.spec import SilentCallbacks
    from training.engine.trainer import (
        StepContext,
        cache_on,
        load_device,
        make_optimizer,
        noise_generator,
        noise_settings,
        prepare_denoiser,
        train_step,
    )

    spec_data = architecture(name, tiny=tiny)
    base = write_config_folder(folder / name, name, spec_data)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    family = family_class(spec_data.get("family", name))(str(base), device, dtype)
    spec = TrainingSpec(
        base_model=str(base),
        output_dir=folder / "out",
        images=[],
        trigger_word="zxq",
        rank=16,
        steps=max(steps + warmup, 1000),  # a full-length run: what the automatic choices see
        optimizer="adamw",
        batch_size=1,
        resolution=spec_data["resolution"],
        **options,
    )
    torch.manual_seed(0)
    # With a memory lever the model is made in host memory and brought onto the GPU block by block, as
    # the trainer does, so the peak below includes that placement.
    denoiser = random_denoiser(spec_data, load_device(spec, device), dtype)
    speed, _swap = prepare_denoiser(spec, family, denoiser, device, alpha=16.0)
    trainable = {key: p for key, p in denoiser.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(spec, list(trainable.values()), device, SilentCallbacks())
    scheduler = get_scheduler("constant", optimizer)
    cache = cache_on(synthetic_cache(spec_data, family, images=15), device)
    generator = torch.Generator().manual_seed(0)
    context = StepContext(
        spec=spec,
        family=family,
        denoiser=denoiser,
        cache=cache,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=generator,
        noise=noise_generator(generator, device),
        device=device,
        sampler=EpochSampler(cache.buckets, [1] * len(cache.buckets), spec.batch_size, seed=0),
        flip_p=0.0,
        settings=noise_settings(spec),
        speed=speed,
    )
    denoiser.train()
    began = time.perf_counter()
    for step in range(1, warmup + 1):
        loss = train_step(context, step)
    float(loss)  # waits for the device
    warmup_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for step in range(warmup + 1, warmup + steps + 1):
        loss = train_step(context, step)
    value = float(loss)
    seconds = (time.perf_counter() - began) / steps
    # FLOPs are counted on an uncompiled step (the counter does not see inside compiled graphs).
    flops = step_flops(context) if speed.compile == "off" else None
    result: dict[str, Any] = {
        "resolution": spec_data["resolution"],
        "options": {"compile": speed.compile, "channels_last": speed.channels_last, "attention": speed.attention,
                    "quantize_base": speed.quantize_base, "swap_blocks": speed.swap_blocks,
                    "fused_optimizer": spec.fused_optimizer,
                    "mixed_precision": speed.mixed_precision},
        "seconds_per_step": round(seconds, 4),
        "warmup_seconds": round(warmup_seconds, 1),
        "final_loss": round(value, 4),
    }  # fmt: skip
    if flops is not None:
        result["step_flops"] = flops
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del context, denoiser, optimizer, cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# What each architecture runs: the default (automatic choices), then each optimisation switched off
# (or, for the memory levers, on), so that every one is measured against the same baseline.
VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "sd15": [("default", {}), ("no compile", {"compile": "off"}), ("no channels-last", {"channels_last": False}),
             ("eager attention", {"attention": "eager"}), ("unfused AdamW", {"fused_optimizer": False})],
    "sdxl": [("default", {}), ("no compile", {"compile": "off"}), ("gradient checkpointing", {"gradient_checkpointing": True})],
    "flux": [("default", {}), ("no compile", {"compile": "off"}), ("fp8 base", {"quantize_base": "fp8"}),
             ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
             ("int8 base + checkpointing", {"quantize_base": "int8", "gradient_checkpointing": True}),
             ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
             ("nf4 base + 20 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 20})],
    "sd35-large": [("default", {}), ("no compile", {"compile": "off"}), ("fp8 base", {"quantize_base": "fp8"}),
                   ("gradient checkpointing", {"gradient_checkpointing": True})],
    "sd35-medium": [("default", {}), ("no compile", {"compile": "off"})],
    "chroma": [("default", {}), ("no compile", {"compile": "off"}), ("fp8 base", {"quantize_base": "fp8"})],
    "zimage": [("default", {}), ("no compile", {"compile": "off"}), ("gradient checkpointing", {"gradient_checkpointing": True})],
    "flux2-klein-4b": [("default", {}), ("no compile", {"compile": "off"}), ("int8 base", {"quantize_base": "int8"})],
    "flux2-klein-9b": [("default", {}), ("no compile", {"compile": "off"}), ("int8 base", {"quantize_base": "int8"}),
                       ("nf4 base + 12 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 12})],
    "flux2-dev": [("default", {}), ("no compile", {"compile": "off"}),
                  ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
                  ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
                  ("nf4 base + 28 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 28})],
    "qwenimage": [("default", {}), ("no compile", {"compile": "off"}), ("fp8 base", {"quantize_base": "fp8"}),
                  ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
                  ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
                  ("nf4 base + 30 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 30}),
                  ("bf16 base + 45 blocks swapped", {"swap_blocks": 45})],
    "hidream": [("default", {}), ("no compile", {"compile": "off"}), ("fp8 base", {"quantize_base": "fp8"}),
                ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
                ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
                ("nf4 base + 24 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 24})],
}  # fmt: skip


def run(scratch: Path, *, tiny: bool = False, quick: bool = False) -> dict[str, Any]:
    if not tiny and not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_tflops(
        device, dtype, size=8192 if device.type == "cuda" else 512, repeats=50 if device.type == "cuda" else 5
    )
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "matmul_tflops": round(peak, 1),
        "architectures": {},
    }
    steps, warmup = (3, 1) if tiny or quick else (20, 5)
    for name, variants in VARIANTS.items():
        rows: dict[str, dict[str, Any]] = {}
        # "no compile" first when quick: its uncompiled step is the one whose FLOPs are counted.
        for label, options in variants if not quick else variants[1:2]:
            try:
                rows[label] = run_one(
                    name, folder=scratch, device=device, steps=steps, warmup=warmup, tiny=tiny, options=options,
                    peak_tflops=peak,
                )  # fmt: skip
            except torch.cuda.OutOfMemoryError as exc:
                rows[label] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
                torch.cuda.empty_cache()
        # The model's FLOPs per step do not depend on how they are run: the utilisation of every
        # variant is measured against the same count.
        flops = max((row.get("step_flops", 0.0) for row in rows.values()), default=0.0)
        for row in rows.values():
            row.pop("step_flops", None)
            if flops and "seconds_per_step" in row:
                row["step_tflop"] = float(f"{flops / 1e12:.4g}")
                row["mfu"] = float(f"{flops / row['seconds_per_step'] / 1e12 / peak:.3g}")
        results["architectures"][name] = rows
    return results
