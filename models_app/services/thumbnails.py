"""Thumbnails of stored images for the admin's pages: the whole image, never cropped, within a bounded box.

A training image may be a 20 MB photograph; a grid of twenty of them scaled down by CSS made the dataset
workspace download hundreds of megabytes. Each asset gets one small WebP copy instead, made on its first
view and stored beside the originals (`Asset.thumbnail`), then served through the same signed media URLs
(media_access.py) as every other file.

Why Pillow here rather than sorl-thumbnail or easy-thumbnails (both maintained and on PyPI; both looked
at): each keeps its own record of which thumbnails exist (sorl a key-value table and the cache,
easy-thumbnails two tables of sources and thumbnails) beside ours, and names its files by a hash of
its options (sorl under cache/, easy-thumbnails beside the source, inside assets/). The orphan sweep
(services/sweeper.py) removes every stored file that no row of ours names, and a test holds every
FileField to that rule: their files would either be swept while their records still point at them, or
never be cleaned once the image is gone. As a FileField of the asset, a thumbnail is named by its row,
swept with it, and needs no key-value store, cache or migration of a third party's. What the libraries
would add over Pillow, which already verifies every upload, is a dozen lines (decode at reduced scale,
EXIF orientation, fit, encode), and a new dependency in the hash-pinned lock files.
"""

from __future__ import annotations

import io
from typing import IO

from django.core.files.base import ContentFile
from PIL import Image, ImageOps

from models_app.models import Asset

# The longest side of a thumbnail in pixels: twice the workspace's cells (about 190 px) for sharp
# thumbnails on high-density screens, a few tens of kilobytes each.
THUMBNAIL_BOX = 384
THUMBNAIL_QUALITY = 80


def thumbnail_bytes(source: IO[bytes], *, box: int = THUMBNAIL_BOX) -> bytes:
    """A WebP of the whole image, upright (EXIF orientation applied), fitted within box x box pixels,
    never enlarged; transparency kept (masked-loss datasets use it)."""
    with Image.open(source) as image:
        # A JPEG decodes at 1/2, 1/4 or 1/8 scale straight away, no smaller than asked: a camera's
        # 4000x3000 photo costs a fraction of a full decode's time and memory.
        image.draft("RGB", (box, box))
        upright = ImageOps.exif_transpose(image)
        has_alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
        picture = upright.convert("RGBA" if has_alpha else "RGB")
        picture.thumbnail((box, box), Image.Resampling.LANCZOS)  # keeps the aspect ratio; only shrinks
        buffer = io.BytesIO()
        picture.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY, method=4)
    return buffer.getvalue()


def asset_thumbnail_ensure(*, asset: Asset) -> Asset:
    """The asset with its thumbnail, made and stored now if it has none yet (OSError if its file
    cannot be read). Two views racing to make it keep one: the loser removes its own copy."""
    if asset.thumbnail:
        return asset
    with asset.file.open("rb") as handle:
        content = thumbnail_bytes(handle)
    storage = asset.thumbnail.storage
    name = storage.save(
        asset.thumbnail.field.generate_filename(asset, f"{asset.public_id}-{THUMBNAIL_BOX}.webp"),
        ContentFile(content),
    )
    if Asset.objects.filter(pk=asset.pk, thumbnail="").update(thumbnail=name):
        asset.thumbnail.name = name
    else:
        storage.delete(name)
        asset.refresh_from_db(fields=["thumbnail"])
    return asset
