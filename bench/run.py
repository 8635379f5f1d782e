"""Benchmarks that run on any machine (the GPU ones come with a GPU): prints a table, writes JSON.

    python bench/run.py [--steps 60] [--out bench/results/cpu.json]

- train: our trainer's steps per second against a reference loop written the way diffusers' LoRA
  training example works (VAE and text encoder run every step, fp32 on CPU, no caching), same tiny
  SD 1.5 model, same 12 images, 64 px, rank 4, batch 2, same number of steps.
- preprocess: 20 camera-sized JPEGs (4000x3000, with EXIF orientation) verified, oriented and
  resized: seconds and peak memory of a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"train_speedup": 1.5, "preprocess_seconds": 5.0, "preprocess_peak_mb": 1024.0}


def dataset(folder: Path, count: int = 12) -> list:
    from training.demo_dataset import make_images
    from training.engine import DatasetImage

    images = []
    for image in make_images(count, trigger_word="zxq"):
        path = folder / image.name
        path.write_bytes(image.content)
        images.append(DatasetImage(path=path, name=image.name, caption=image.caption))
    return images


def bench_ours(base: Path, images: list, steps: int, work: Path) -> dict:
    from training.engine import SilentCallbacks, TrainingSpec, train

    class Timer(SilentCallbacks):
        def __init__(self) -> None:
            self.first: float | None = None
            self.first_step = 0
            self.last = 0.0
            self.last_step = 0

        def on_progress(self, progress) -> None:
            now = time.perf_counter()
            if self.first is None:
                self.first, self.first_step = now, progress.step
            self.last, self.last_step = now, progress.step

    timer = Timer()
    started = time.perf_counter()
    spec = TrainingSpec(
        base_model=str(base),
        output_dir=work,
        images=images,
        trigger_word="zxq",
        rank=4,
        steps=steps,
        learning_rate=1e-3,
        batch_size=2,
        optimizer="adamw",
        resolution=64,
        captioning_strategy="description",
        progress_interval_seconds=0.0,
        caption_dropout_rate=0.0,
        resume=False,
    )
    train(spec, timer)
    total = time.perf_counter() - started
    loop_steps = timer.last_step - timer.first_step
    return {"steps_per_second": loop_steps / (timer.last - timer.first), "wall_seconds": total}


def bench_reference(base: Path, images: list, steps: int) -> dict:
    """The diffusers-example way: encode images and captions every step, everything in fp32."""
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
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-3)
    pixels = []
    for image in images:  # the example's dataloader transforms: resize, center crop, normalise
        with Image.open(image.path) as opened:
            square = ImageOps.fit(opened.convert("RGB"), (64, 64))
        pixels.append(torch.from_numpy(np.asarray(square, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    captions = [image.caption for image in images]
    generator = torch.Generator().manual_seed(0)
    start = None
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()  # like ours: the first step (warm-up) is not counted
        index = torch.randint(0, len(images), (2,), generator=generator)
        batch = torch.stack([pixels[i] for i in index])
        ids = tokenizer([captions[i] for i in index], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids  # fmt: skip
        latents = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (2,))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(ids)[0]
        loss = F.mse_loss(unet(noisy, timesteps, hidden).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert start is not None
    return {"steps_per_second": steps / (time.perf_counter() - start)}


def make_camera_jpegs(folder: Path, count: int = 20) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        # Smooth gradients plus noise: compresses like a photo (a few MB at quality 90).
        y, x = np.mgrid[0:3000, 0:4000]
        base = np.stack([(x * 255 // 4000), (y * 255 // 3000), ((x + y) * 255 // 7000)], axis=-1).astype(np.int16)
        noisy = np.clip(base + rng.integers(-40, 40, size=base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(noisy)
        exif = image.getexif()
        exif[0x0112] = 6 if index % 2 else 1  # half of them "rotated 90 degrees" like a portrait phone shot
        path = folder / f"camera-{index:02d}.jpg"
        image.save(path, format="JPEG", quality=90, exif=exif)
        paths.append(path)
    return paths


# A fresh process, so that its peak memory is the preprocessing's own: the upload check the platform
# runs on every image (a full decode), then the engine's orient-and-fit at 1024 px.
PREPROCESS_CHILD = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
import django
django.setup()
from models_app.services.assets import image_verify
from training.engine import DatasetImage
from training.engine.data import fit_to_bucket, make_buckets, nearest_bucket, open_upright
paths = [Path(p) for p in {paths!r}]
started = time.perf_counter()
buckets = make_buckets(1024, 64)
for path in paths:
    image_verify(content=path.read_bytes(), name=path.name)
    image = open_upright(DatasetImage(path=path, name=path.name), target=2048)
    fit_to_bucket(image, nearest_bucket(image.width, image.height, buckets))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would include the parent's peak.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(time.perf_counter() - started, peak_kb / 1024)
"""


def bench_preprocess(paths: list[Path]) -> dict:
    code = PREPROCESS_CHILD.format(root=str(ROOT), paths=[str(p) for p in paths])
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"seconds": float(output[0]), "peak_mb": float(output[1]), "images": len(paths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training.engine import quiet_libraries
    from training.engine.tiny import build_tiny_model

    quiet_libraries()
    results: dict = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        base = build_tiny_model("sd15", folder / "tiny-sd15")
        (folder / "data").mkdir()
        images = dataset(folder / "data")
        ours = bench_ours(base, images, args.steps, folder / "ours")
        reference = bench_reference(base, images, args.steps)
        results["train"] = {
            "ours_steps_per_second": round(ours["steps_per_second"], 2),
            "reference_steps_per_second": round(reference["steps_per_second"], 2),
            "speedup": round(ours["steps_per_second"] / reference["steps_per_second"], 2),
            "target_speedup": TARGETS["train_speedup"],
        }
        (folder / "camera").mkdir()
        camera = make_camera_jpegs(folder / "camera")
        sizes = [p.stat().st_size for p in camera]
        preprocess = bench_preprocess(camera)
        results["preprocess"] = {
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in preprocess.items()},
            "mean_file_mb": round(sum(sizes) / len(sizes) / 1e6, 2),
            "target_seconds": TARGETS["preprocess_seconds"],
            "target_peak_mb": TARGETS["preprocess_peak_mb"],
        }
    rows = [
        ("training, tiny SD 1.5 CPU (steps/s)", f"{results['train']['ours_steps_per_second']} vs {results['train']['reference_steps_per_second']} reference",
         f"x{results['train']['speedup']}", f">= x{TARGETS['train_speedup']}", results["train"]["speedup"] >= TARGETS["train_speedup"]),
        ("preprocess 20 JPEGs 4000x3000 (s)", f"{results['preprocess']['seconds']}", "", f"< {TARGETS['preprocess_seconds']}",
         results["preprocess"]["seconds"] < TARGETS["preprocess_seconds"]),
        ("preprocess peak memory (MB)", f"{results['preprocess']['peak_mb']}", "", f"< {TARGETS['preprocess_peak_mb']:.0f}",
         results["preprocess"]["peak_mb"] < TARGETS["preprocess_peak_mb"]),
    ]  # fmt: skip
    print(f"{'benchmark':<40} {'measured':<28} {'ratio':<8} {'target':<10} met")
    for name, measured, ratio, target, met in rows:
        print(f"{name:<40} {measured:<28} {ratio:<8} {target:<10} {'yes' if met else 'NO'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(
        f"\nwritten to {args.out}; peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB"
    )


if __name__ == "__main__":
    main()
