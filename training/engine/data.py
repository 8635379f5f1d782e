"""Dataset preparation: open and orient the images, transform and bucket them, write each caption."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from contract.captions import with_trigger as with_trigger  # the admin's trigger-word tool reads it too
from contract.transforms import InvalidTransform, Transform
from contract.transforms import validate_transforms as parse_transforms
from training.engine.errors import EngineError
from training.engine.spec import CAPTIONING_STRATEGIES, Captioner, DatasetImage, TrainingSpec

# --- transforms ------------------------------------------------------------------------------------
# The list is parsed by contract/transforms.py, which the API's validation reads too.


def validate_transforms(raw: Any) -> list[Transform]:
    """Parse `preprocessing_transforms`; EngineError naming the first bad entry."""
    try:
        return parse_transforms(raw)
    except InvalidTransform as exc:
        raise EngineError(str(exc)) from exc


def apply_transforms(image: Image.Image, transforms: list[Transform], rng: random.Random) -> Image.Image:
    """The deterministic and once-drawn random transforms; flips are applied per step instead."""
    for transform in transforms:
        if transform.type == "resize":
            # Scale so the image covers the size, keeping its aspect ratio.
            width, height = transform.size()
            scale = max(width / image.width, height / image.height)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
            )
        elif transform.type in ("center_crop", "random_crop"):
            width, height = transform.size()
            width, height = min(width, image.width), min(height, image.height)
            if transform.type == "center_crop":
                left, top = (image.width - width) // 2, (image.height - height) // 2
            else:
                left, top = rng.randint(0, image.width - width), rng.randint(0, image.height - height)
            image = image.crop((left, top, left + width, top + height))
    return image


def flip_probability(transforms: list[Transform]) -> float:
    flips = [t.p for t in transforms if t.type == "horizontal_flip"]
    return flips[-1] if flips else 0.0


# --- buckets ---------------------------------------------------------------------------------------


def make_buckets(resolution: int, multiple: int) -> list[tuple[int, int]]:
    """(width, height) sizes of about resolution² pixels, multiples of `multiple`, aspect 1:2 to 2:1."""
    step = max(multiple, (resolution // 16) // multiple * multiple)
    area = resolution * resolution
    buckets = set()
    width = step
    while width <= resolution * 2:
        height = max(step, round(area / width / step) * step)
        if 0.5 <= width / height <= 2.0:
            buckets.add((width, height))
        width += step
    buckets.add((resolution // multiple * multiple, resolution // multiple * multiple))
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


# --- images ----------------------------------------------------------------------------------------


def decode_min_side(resolution: int, transforms: list[Transform]) -> int:
    """The shorter side an image needs when decoded: a bucket's sides are at most `resolution` on the
    short side, so that is enough; crops and resizes keep a margin of twice that."""
    return resolution * 2 if any(t.type != "horizontal_flip" for t in transforms) else resolution


def open_upright(image: DatasetImage, *, min_side: int | None = None, mode: str = "RGB") -> Image.Image:
    """The image in RGB with its EXIF orientation applied. A JPEG is decoded at the smallest DCT
    scale (1/2, 1/4, 1/8) whose shorter side is still at least `min_side`: a 4000x3000 camera file
    needed at 1024 px decodes at 2000x1500, four times fewer pixels to decode, hold and resize."""
    try:
        with Image.open(image.path) as opened:
            if min_side and opened.format == "JPEG":
                width, height = opened.size
                short = max(1, min(width, height))
                # draft() keeps both sides at least the requested size: ask in the image's own aspect.
                opened.draft("RGB", (math.ceil(width * min_side / short), math.ceil(height * min_side / short)))
            return ImageOps.exif_transpose(opened).convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise EngineError(f"training image {image.name!r} cannot be read as an image ({exc})") from exc


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    return ImageOps.fit(image, bucket, method=Image.Resampling.LANCZOS)


def bucket_crop(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the centred crop `fit_to_bucket` takes, in the resized image's pixels (SDXL's
    `crops_coords_top_left`)."""
    width, height = size
    scale = max(bucket[0] / width, bucket[1] / height)
    return round((height * scale - bucket[1]) / 2), round((width * scale - bucket[0]) / 2)


def alpha_mask(image: Image.Image) -> np.ndarray | None:
    """The alpha channel as weights in [0, 1] (HW float32), or None for an image without transparency."""
    if image.mode != "RGBA":
        return None
    alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
    return None if alpha.min() >= 1.0 else alpha


def to_tensor_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 -> CHW float32 in [-1, 1]."""
    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1).copy()


def to_picture(pixels: np.ndarray) -> Image.Image:
    """CHW float32 in [-1, 1] -> an RGB image (to_tensor_array's inverse)."""
    return Image.fromarray(((pixels.transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype("uint8"))


# --- captions --------------------------------------------------------------------------------------

AVAILABLE_CAPTIONING = CAPTIONING_STRATEGIES


def caption_for(
    image: DatasetImage,
    *,
    strategy: str,
    trigger_word: str,
    captioner: Captioner | None = None,
    prompt: str | None = None,
    picture: Image.Image | None = None,
) -> str:
    if strategy not in CAPTIONING_STRATEGIES:
        raise EngineError(
            f"preprocessing_captioning_strategy {strategy!r} is unknown; "
            f"choose one of: {', '.join(CAPTIONING_STRATEGIES)}"
        )
    if strategy == "trigger_only":
        return trigger_word
    if strategy == "description":
        return with_trigger(image.caption, trigger_word)
    if strategy == "filename":
        sidecar = Path(image.path).with_suffix(".txt")
        if not sidecar.is_file():
            raise EngineError(f"captioning strategy 'filename': {image.name!r} has no caption file beside it (.txt)")
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
        if not text:
            raise EngineError(f"captioning strategy 'filename': the caption file of {image.name!r} is empty")
        return with_trigger(text, trigger_word)
    if captioner is None:
        raise EngineError(
            "preprocessing_captioning_strategy 'automatic' is not available on this server: no local captioning "
            "model is installed (set TRAINING_CAPTION_MODEL to a captioning model folder)"
        )
    text = captioner(picture if picture is not None else open_upright(image), prompt).strip()
    if not text:
        raise EngineError(f"the captioning model wrote an empty caption for {image.name!r}")
    return with_trigger(text, trigger_word)


# --- the prepared dataset --------------------------------------------------------------------------


@dataclass
class PreparedItem:
    name: str
    caption: str
    bucket: tuple[int, int]
    pixels: np.ndarray  # CHW float32, the bucket's size
    source_pixels: np.ndarray | None = None  # (sources, C, H, W): an edit pair's conditioning images, the bucket's size
    mask: np.ndarray | None = None  # HW float32 loss weights in [0, 1] (masked loss), the bucket's size
    original_size: tuple[int, int] = (0, 0)  # (height, width) before fitting to the bucket
    crop_top_left: tuple[int, int] = (0, 0)
    repeats: int = 1
    validation: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def dataset_fingerprint(spec: TrainingSpec, family: str, resolution: int, items: list[PreparedItem]) -> str:
    """Identifies what the cache holds: the same files, final captions, crops and sizes give the same
    fingerprint (captions as written by the strategy: a sidecar file or a captioner may change them)."""
    digest = hashlib.sha256()
    digest.update(f"{family}|{spec.base_model}|{resolution}|{spec.captioning_strategy}|{spec.trigger_word}".encode())
    digest.update(repr(spec.transforms).encode())
    digest.update(
        f"|mask={spec.masked_loss}|class={spec.prior_preservation_class}|tokens={spec.train_text_encoder}".encode()
    )
    for image in spec.images:
        digest.update(image.name.encode() + b"\0" + image.caption.encode() + b"\0")
        digest.update(hashlib.sha256(Path(image.path).read_bytes()).digest())
    for pair in spec.pairs:
        digest.update(pair.instruction.encode())
        for side in (*pair.sources, pair.target):
            digest.update(hashlib.sha256(Path(side.path).read_bytes()).digest())
    for item in items:  # random crops depend on the seed; captions on sidecar files and captioners
        digest.update(f"{item.caption}\0{item.bucket}{item.original_size}{item.crop_top_left}".encode())
        digest.update(hashlib.sha256(item.pixels.tobytes()).digest())
    return digest.hexdigest()[:16]


# --- the order of the data -------------------------------------------------------------------------


class EpochSampler:
    """Which images each micro-batch trains on: epochs that visit every training image `repeats`
    times, shuffled, in batches drawn from one aspect-ratio bucket at a time (a bucket: the image's (width,
    height), with any further key that a batch must share, as an edit pair's number of sources).

    A bucket's last batch, when short, is filled from the start of that bucket's shuffled order, so
    batch shapes stay fixed and every image is still seen in the epoch. The order is a function of the
    seed and the micro-batch's number only, so a resumed run continues exactly where it stopped."""

    def __init__(self, buckets: Sequence[tuple[int, ...]], repeats: list[int], batch_size: int, seed: int) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.by_bucket: dict[tuple[int, ...], list[int]] = {}
        for index, (bucket, count) in enumerate(zip(buckets, repeats, strict=True)):
            self.by_bucket.setdefault(tuple(bucket), []).extend([index] * max(0, count))
        self.by_bucket = {bucket: members for bucket, members in self.by_bucket.items() if members}
        if not self.by_bucket:
            raise EngineError("no images left to train on")
        self.batches_per_epoch = sum(math.ceil(len(m) / batch_size) for m in self.by_bucket.values())
        self._epoch = -1
        self._batches: list[list[int]] = []

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        batches: list[list[int]] = []
        for bucket in sorted(self.by_bucket):
            order = list(self.by_bucket[bucket])
            rng.shuffle(order)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                while len(batch) < self.batch_size:
                    batch += order[: self.batch_size - len(batch)]
                batches.append(batch)
        rng.shuffle(batches)
        return batches

    def batch(self, number: int) -> list[int]:
        """The images of micro-batch `number` (0-based, counted over the whole run)."""
        epoch, position = divmod(number, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self.epoch_batches(epoch)
        return self._batches[position]

    def epoch_of(self, number: int) -> int:
        return number // self.batches_per_epoch
