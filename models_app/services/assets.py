"""Stored image files: verified with Pillow before anything is written."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from PIL import Image, UnidentifiedImageError

from models_app.errors import InvalidInput
from models_app.input_rules import FILE_NAME_MAX, URL_MAX, text_check
from models_app.models import Asset, Project, Team


@dataclass(frozen=True)
class VerifiedImage:
    format: str
    width: int
    height: int
    size_bytes: int
    sha256: str
    extension: str


FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def image_verify(*, content: bytes, name: str, field: str = "file") -> VerifiedImage:
    """Decode the whole image; raise InvalidInput naming the file unless it is a usable image."""
    size = len(content)
    if size == 0:
        raise InvalidInput(f"{name!r} is empty", field=field)
    if size > settings.IMAGE_MAX_BYTES:
        raise InvalidInput(
            f"{name!r} is {size} bytes; images may be at most {settings.IMAGE_MAX_BYTES} bytes", field=field
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as header:
                image_format = header.format or ""
                width, height = header.size
                if width * height > settings.IMAGE_MAX_PIXELS:
                    raise InvalidInput(
                        f"{name!r} is {width}x{height} pixels; images may have at most "
                        f"{settings.IMAGE_MAX_PIXELS} pixels",
                        field=field,
                    )
                header.verify()
            # verify() checks the structure only; a decode catches truncated pixel data. A JPEG is
            # decoded at 1/8 scale: every byte of its data is still read, at half the time and memory.
            with Image.open(io.BytesIO(content)) as full:
                if full.format == "JPEG":
                    full.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                full.load()
    except InvalidInput:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"{name!r} is not an image this server can read ({exc})", field=field) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{name!r} is a damaged or truncated image ({exc})", field=field) from exc
    if image_format not in settings.IMAGE_FORMATS:
        raise InvalidInput(
            f"{name!r} is a {image_format or 'unknown'} image; accepted formats: {', '.join(settings.IMAGE_FORMATS)}",
            field=field,
        )
    return VerifiedImage(
        format=image_format,
        width=width,
        height=height,
        size_bytes=size,
        sha256=hashlib.sha256(content).hexdigest(),
        extension=FORMAT_EXTENSIONS.get(image_format, ""),
    )


def asset_create(
    *,
    team: Team,
    content: bytes,
    name: str,
    project: Project | None = None,
    kind: str = Asset.Kind.UPLOAD,
    field: str = "file",
    verified: VerifiedImage | None = None,
) -> Asset:
    """Verify and store an image. On any failure, neither the row nor the file remains.

    `verified` is this content's own verification when the caller already decoded it."""
    # A file's name comes from a file system or a URL, where long names are honest: it is shortened, not refused.
    name = text_check(name, field=field, label="the file name", max_length=URL_MAX)[:FILE_NAME_MAX]
    if verified is None:
        verified = image_verify(content=content, name=name, field=field)
    asset = Asset(
        team=team,
        project=project,
        kind=kind,
        original_name=name,
        format=verified.format,
        width=verified.width,
        height=verified.height,
        size_bytes=verified.size_bytes,
        sha256=verified.sha256,
    )
    # The stored name takes the extension of what the file really is, not what it claimed to be.
    asset.file.save(f"upload{verified.extension}", ContentFile(content), save=False)
    try:
        with transaction.atomic():
            asset.save()
    except BaseException:
        asset.file.delete(save=False)
        raise
    return asset
