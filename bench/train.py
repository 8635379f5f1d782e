"""Training throughput on this machine's CPU: our trainer against a reference loop written the way the
diffusers training examples work, same tiny SD 1.5 model, data, resolution, rank, batch and steps, in
one process; then each of our optimisations switched off (or on) one at a time."""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Any

from training.engine import DatasetImage, SilentCallbacks, TrainingSpec, train

RESOLUTION, RANK, BATCH = 64, 4, 2


def dataset(folder: Path, count: int = 12) -> list[DatasetImage]:
    from training.engine.testing.images import write_dataset

    return write_dataset(folder, count)


class LoopClock(SilentCallbacks):
    """The time at the end of every step (the spec reports progress after each one)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_stage(self, stage: str, processed: int, total: int) -> None:
        if stage == "training" and not self.times:
            self.times.append(time.perf_counter())

    def on_progress(self, progress: Any) -> None:
        self.times.append(time.perf_counter())


def rates(times: list[float]) -> dict[str, float]:
    """Steady-state steps per second (the median step of the last two thirds: after compilation and
    warm-up) and the whole loop's, warm-up included."""
    durations = [b - a for a, b in itertools.pairwise(times)]
    steady = statistics.median(durations[len(durations) // 3 :])
    return {"steps_per_second": 1.0 / steady, "whole_loop_steps_per_second": len(durations) / (times[-1] - times[0])}


def bench_ours(base: Path, images: list[DatasetImage], steps: int, work: Path, **options: Any) -> dict[str, float]:
    clock = LoopClock()
    # The reference adapts the attention projections only: the same modules here, for a like-for-like rate.
    values: dict[str, Any] = {
        "compile": "blocks",
        "progress_interval_seconds": 0.0,
        "lora_targets": "attention",
        "snapshot_every_steps": 10**9,
        **options,
    }
    spec = TrainingSpec(
        base_model=str(base),
        output_dir=work,
        images=images,
        trigger_word="zxq",
        rank=RANK,
        steps=steps,
        learning_rate=1e-3,
        batch_size=BATCH,
        optimizer="adamw",
        resolution=RESOLUTION,
        captioning_strategy="description",
        caption_dropout_rate=0.0,
        save_every=0,
        resume=False,
        **values,
    )
    train(spec, clock)
    return rates(clock.times)


def bench_reference(base: Path, images: list[DatasetImage], steps: int, *, cache: bool = False) -> dict[str, float]:
    """The diffusers-example way: the VAE and the text encoder run every step, everything in fp32, the
    loss read back every step (the example logs it). `cache=True` encodes once instead (the ablation)."""
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from PIL import Image, ImageOps
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(str(base), subfolder="scheduler")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    pixels = []
    for image in images:  # the example's dataloader transforms: resize, center crop, normalise
        with Image.open(image.path) as opened:
            square = ImageOps.fit(opened.convert("RGB"), (RESOLUTION, RESOLUTION))
        pixels.append(torch.from_numpy(np.asarray(square, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    captions = [image.caption for image in images]

    def tokens(indices: list[int]) -> torch.Tensor:
        return tokenizer([captions[i] for i in indices], padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids  # fmt: skip

    cached_latents = cached_hidden = None
    if cache:
        with torch.no_grad():
            cached_latents = vae.encode(torch.stack(pixels)).latent_dist
            cached_hidden = text_encoder(tokens(list(range(len(images)))))[0]
    generator = torch.Generator().manual_seed(0)
    times = [time.perf_counter()]
    for _ in range(steps):
        index = torch.randint(0, len(images), (BATCH,), generator=generator)
        if cached_latents is not None and cached_hidden is not None:
            mean, std = cached_latents.mean[index], cached_latents.std[index]
            latents = (mean + std * torch.randn_like(mean)) * vae.config.scaling_factor
            hidden = cached_hidden[index]
        else:
            batch = torch.stack([pixels[i] for i in index])
            latents = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
            hidden = text_encoder(tokens(index.tolist()))[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, hidden).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # the example logs the loss every step
        times.append(time.perf_counter())
    return rates(times)


# Each of our optimisations measured against our configuration for a long run, one switched at a time.
ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    ("no compile", {"compile": "off"}),
    ("channels-last", {"channels_last": True}),
    ("eager attention (no SDPA)", {"attention": "eager"}),
    ("unfused AdamW", {"fused_optimizer": False}),
    ("fp8 base weights", {"quantize_base": "fp8"}),
    ("bf16 autocast", {"mixed_precision": "bf16"}),
]


def run(scratch: Path, base: Path, *, steps: int, ablations: bool, repeats: int = 2) -> dict[str, Any]:
    """Ours and the reference alternate `repeats` times (this machine's speed drifts); the best of each."""
    images = dataset(scratch / "data")
    bench_reference(base, images, 4)  # imports, allocator, kernels: no first-use costs in the figures
    ours_runs, reference_runs = [], []
    for index in range(repeats):
        ours_runs.append(bench_ours(base, images, steps, scratch / f"ours-{index}"))
        reference_runs.append(bench_reference(base, images, steps))
    ours = max(ours_runs, key=lambda r: r["steps_per_second"])
    reference = max(reference_runs, key=lambda r: r["steps_per_second"])
    result: dict[str, Any] = {
        "model": f"tiny SD 1.5, {RESOLUTION} px, rank {RANK}, batch {BATCH}, {steps} steps",
        "ours_steps_per_second": round(ours["steps_per_second"], 2),
        "reference_steps_per_second": round(reference["steps_per_second"], 2),
        "speedup": round(ours["steps_per_second"] / reference["steps_per_second"], 2),
        "ours_whole_loop_steps_per_second": round(ours["whole_loop_steps_per_second"], 2),
        "reference_whole_loop_steps_per_second": round(reference["whole_loop_steps_per_second"], 2),
    }
    if ablations:
        cached = bench_reference(base, images, steps, cache=True)
        rows = {"reference + cached latents and embeddings": round(cached["steps_per_second"], 2)}
        for label, options in ABLATIONS:
            measured = bench_ours(base, images, steps, scratch / label.replace(" ", "-"), **options)
            rows[label] = round(measured["steps_per_second"], 2)
        result["ablations_steps_per_second"] = rows
    return result
