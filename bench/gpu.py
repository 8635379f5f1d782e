"""Real-size GPU benchmarks: every family's denoisers (each family folder's bench.py lists its published
architectures: SD 1.5 at 512 px, the others at 1024 px) built from their published configurations with random
weights (the compute is the same as with real ones), LoRA rank 16, batch 1, trained by the engine's own step
(`trainer.train_step`): seconds per step, peak GPU memory, and model FLOPs utilisation against the matmul rate
measured on the same GPU.

Runs only where CUDA is available; `--tiny` runs the same code on small configs (on a CPU too), which
is how the test suite keeps this file working on machines without a GPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from training.engine.testing.published import SCHEDULER


def architectures() -> dict[str, dict[str, Any]]:
    """Every benchmarked architecture by name, from the families' own folders (training/engine/families/
    <folder>/bench.py), in the facts registry's order: its published configuration, the tiny one the tests
    run, the variants measured, its published size and any targets."""
    from contract.families import FAMILY_KEYS
    from training.engine.families import family_module

    found: dict[str, dict[str, Any]] = {}
    for family in FAMILY_KEYS:
        for name, spec in family_module(family, "bench").ARCHITECTURES.items():
            if spec["family"] == family:
                found[name] = spec
    return found


def architecture(name: str, *, tiny: bool) -> dict[str, Any]:
    spec = json.loads(json.dumps(architectures()[name]))
    if tiny:
        override = spec["tiny"]
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
    from training.engine.trainer.cache import Cache

    side = spec["resolution"] // family.vae_scale()
    channels = spec["vae"]["latent_channels"]
    generator = torch.Generator().manual_seed(0)
    means = [torch.randn((channels, side, side), generator=generator) for _ in range(images)]
    stds = [torch.full((channels, side, side), 0.01) for _ in range(images)]
    prompts = {
        key: torch.randn((images + 1, *shape), generator=generator) * 0.1 for key, shape in spec["prompts"].items()
    }
    # An edit row: each image's pair has `sources` reference images at its size.
    sources = int(spec.get("sources", 0))
    source_means = [torch.randn((sources, channels, side, side), generator=generator) for _ in range(images)]
    return Cache(
        means=means,
        stds=stds,
        flipped_means=None,
        flipped_stds=None,
        source_means=source_means if sources else None,
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

    from training.engine.trainer.step import train_step

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
    from training.engine.trainer.cache import cache_on
    from training.engine.trainer.context import StepContext, noise_generator, noise_settings
    from training.engine.trainer.optimizer import make_optimizer
    from training.engine.trainer.setup import load_device, prepare_denoiser
    from training.engine.trainer.step import train_step

    spec_data = architecture(name, tiny=tiny)
    base = write_config_folder(folder / name, name, spec_data)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    family = family_class(spec_data["family"])(str(base), device, dtype)
    family.uses_pairs = bool(spec_data.get("sources"))  # an edit row trains on pairs
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
    for name, spec in architectures().items():
        variants = [(label, options) for label, options in spec["variants"]]
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
