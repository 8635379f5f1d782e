"""Synthetic training images drawn with Pillow: varied shapes and colours, each with a caption.

Used by `manage.py demo` and the tests, so that a dataset exists without any download.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from training.engine.spec import DatasetImage

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
COLOURS = {
    "red": (214, 48, 49),
    "orange": (230, 126, 34),
    "yellow": (241, 196, 15),
    "green": (39, 174, 96),
    "blue": (41, 128, 185),
    "purple": (142, 68, 173),
    "pink": (232, 67, 147),
    "teal": (22, 160, 133),
}
BACKGROUNDS = {"white": (245, 245, 240), "grey": (150, 150, 150), "black": (25, 25, 30), "cream": (250, 235, 200)}


@dataclass(frozen=True)
class SyntheticImage:
    name: str
    caption: str
    content: bytes  # PNG or JPEG bytes
    width: int
    height: int


def make_images(count: int, *, trigger_word: str = "", seed: int = 0, fmt: str = "PNG") -> list[SyntheticImage]:
    """`count` different images (sizes vary between 96 and 160 pixels a side) with matching captions."""
    rng = random.Random(seed)
    images: list[SyntheticImage] = []
    for index in range(count):
        shape = SHAPES[index % len(SHAPES)]
        colour = list(COLOURS)[(index * 3 + rng.randrange(len(COLOURS))) % len(COLOURS)]
        background = list(BACKGROUNDS)[index % len(BACKGROUNDS)]
        width, height = rng.choice([(128, 128), (160, 120), (120, 160), (144, 96), (96, 144)])
        image = Image.new("RGB", (width, height), BACKGROUNDS[background])
        _draw_shape(ImageDraw.Draw(image), shape, COLOURS[colour], width, height, rng)
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        article = "an" if colour[0] in "aeiou" else "a"
        subject = f"{article} {colour} {shape} on a {background} background"
        caption = f"{trigger_word}, {subject}" if trigger_word else subject
        extension = "jpg" if fmt.upper() == "JPEG" else fmt.lower()
        images.append(
            SyntheticImage(
                name=f"{index + 1:02d}-{colour}-{shape}.{extension}",
                caption=caption,
                content=buffer.getvalue(),
                width=width,
                height=height,
            )
        )
    return images


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], width: int, height: int, rng: random.Random
) -> None:
    size = min(width, height) * rng.uniform(0.45, 0.7)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    cy = height / 2 + rng.uniform(-0.1, 0.1) * height
    half = size / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(3, int(size / 6)))
    else:
        bar = size / 6
        draw.rectangle((cx - half, cy - bar, cx + half, cy + bar), fill=colour)
        draw.rectangle((cx - bar, cy - half, cx + bar, cy + half), fill=colour)


def write_dataset(folder: Path, count: int, *, trigger_word: str = "zxq") -> list[DatasetImage]:
    """`count` generated images written to `folder`, as the engine's dataset entries (scripts, tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for image in make_images(count, trigger_word=trigger_word):
        path = folder / image.name
        path.write_bytes(image.content)
        images.append(DatasetImage(path=path, name=image.name, caption=image.caption))
    return images


def write_concept(
    folder: Path,
    count: int,
    *,
    colour: tuple[int, int, int],
    caption: str,
    held_out: int = 0,
    size: int = 64,
    seed: int = 0,
    prefix: str = "",
) -> list[DatasetImage]:
    """A one-concept dataset with a property that can be measured after training: `count` images of a
    pale disc, at varying places and sizes, on a background of one `colour`; the last `held_out` are
    marked for validation. For the tests and benchmarks that check that training learns its data."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pale = tuple(min(255, channel + 110) for channel in colour)
    images = []
    for index in range(count):
        image = Image.new("RGB", (size, size), colour)
        radius = size * rng.uniform(0.15, 0.3)
        cx, cy = size * rng.uniform(0.3, 0.7), size * rng.uniform(0.3, 0.7)
        ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=pale)
        path = folder / f"{prefix}{index:02d}.png"
        image.save(path)
        images.append(DatasetImage(path=path, name=path.name, caption=caption, validation=index >= count - held_out))
    return images
