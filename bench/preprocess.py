"""Preprocessing: 20 camera-sized JPEGs (4000x3000, half of them with an EXIF rotation) verified as the
upload path does, then oriented, decoded at reduced scale and fitted to a 1024 px bucket as the engine
does: seconds and peak memory of a fresh process (so the figure is the preprocessing's own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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


# The child: the upload check the platform runs on every image, then the engine's own preparation.
PREPROCESS_CHILD = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
import django
django.setup()
from models_app.services.assets import image_verify
from training.engine import DatasetImage
from training.engine.data import decode_min_side, fit_to_bucket, make_buckets, nearest_bucket, open_upright, to_tensor_array
paths = [Path(p) for p in {paths!r}]
started = time.perf_counter()
buckets = make_buckets(1024, 64)
for path in paths:
    image_verify(content=path.read_bytes(), name=path.name)
    image = open_upright(DatasetImage(path=path, name=path.name), min_side=decode_min_side(1024, []))
    to_tensor_array(fit_to_bucket(image, nearest_bucket(image.width, image.height, buckets)))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would include the parent's peak.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(time.perf_counter() - started, peak_kb / 1024)
"""


def run(scratch: Path, count: int = 20) -> dict[str, Any]:
    folder = scratch / "camera"
    folder.mkdir(parents=True, exist_ok=True)
    paths = make_camera_jpegs(folder, count)
    code = PREPROCESS_CHILD.format(root=str(ROOT), paths=[str(p) for p in paths])
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    sizes = [p.stat().st_size for p in paths]
    return {
        "images": len(paths),
        "seconds": round(float(output[0]), 2),
        "peak_mb": round(float(output[1]), 1),
        "mean_file_mb": round(sum(sizes) / len(sizes) / 1e6, 2),
    }
