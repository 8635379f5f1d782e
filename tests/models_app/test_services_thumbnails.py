"""Thumbnails (services/thumbnails.py): the whole image, upright, within the box, made once, swept with
the rows that name them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from models_app.models import Asset
from models_app.services.assets import asset_create
from models_app.services.sweeper import orphans_sweep
from models_app.services.thumbnails import THUMBNAIL_BOX, asset_thumbnail_ensure, thumbnail_bytes
from tests.factories import TeamFactory

pytestmark = pytest.mark.django_db


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decoded(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


def test_a_thumbnail_is_the_whole_image_fitted_in_the_box_never_enlarged() -> None:
    photo = Image.new("RGB", (4000, 3000), "navy")  # a camera-sized JPEG: decoded at reduced scale
    photo.paste((255, 255, 0), (3800, 2800, 4000, 3000))  # a corner a crop would lose
    thumbnail = decoded(thumbnail_bytes(io.BytesIO(encoded(photo, "JPEG", quality=90))))
    assert thumbnail.format == "WEBP" and thumbnail.size == (THUMBNAIL_BOX, 288)
    red, green, blue = thumbnail.convert("RGB").getpixel((THUMBNAIL_BOX - 3, 285))
    assert red > 200 and green > 200 and blue < 80  # the corner is still there: not cropped
    small = decoded(thumbnail_bytes(io.BytesIO(encoded(Image.new("RGB", (100, 60), "red"), "PNG"))))
    assert small.size == (100, 60)


def test_a_thumbnail_is_upright_and_keeps_transparency() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated a quarter turn, as the engine and browsers show it
    sideways = encoded(Image.new("RGB", (800, 400), "green"), "JPEG", exif=exif)
    assert decoded(thumbnail_bytes(io.BytesIO(sideways))).size == (192, THUMBNAIL_BOX)
    cut_out = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    cut_out.paste((255, 0, 0, 255), (50, 50, 150, 150))
    thumbnail = decoded(thumbnail_bytes(io.BytesIO(encoded(cut_out, "PNG"))))
    assert thumbnail.mode == "RGBA" and thumbnail.getpixel((5, 5))[3] == 0 and thumbnail.getpixel((100, 100))[3] > 250


def test_a_thumbnail_is_made_once_and_swept_only_with_its_asset(settings) -> None:
    team = TeamFactory()
    asset = asset_create(team=team, content=encoded(Image.new("RGB", (900, 600), "red"), "PNG"), name="a.png")
    made = asset_thumbnail_ensure(asset=asset)
    name = made.thumbnail.name
    assert name == f"thumbnails/{team.public_id}/{asset.public_id}-{THUMBNAIL_BOX}.webp"
    assert Asset.objects.get(pk=asset.pk).thumbnail.name == name
    stored = Path(settings.MEDIA_ROOT) / name
    assert decoded(stored.read_bytes()).size == (THUMBNAIL_BOX, 256)
    # A second view finds it; a view racing another keeps the first one stored and removes its own copy.
    assert asset_thumbnail_ensure(asset=Asset.objects.get(pk=asset.pk)).thumbnail.name == name
    stale = Asset.objects.get(pk=asset.pk)
    stale.thumbnail.name = ""
    assert asset_thumbnail_ensure(asset=stale).thumbnail.name == name
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]

    assert orphans_sweep(remove=True, grace_seconds=0).found == []  # named by its row: kept
    Asset.objects.filter(pk=asset.pk).delete()
    report = orphans_sweep(remove=True, grace_seconds=0)
    assert name in {orphan.location for orphan in report.removed} and not stored.exists()
