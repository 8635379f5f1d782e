"""Where an image to add can come from: an asset id, an http(s) URL, a data URL, or a server path.

Each is turned into bytes (or an existing asset) before anything is stored, so a batch with one bad
source stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from django.conf import settings

from models_app.errors import InvalidInput
from models_app.input_rules import path_inside_roots, public_id_plausible, url_check
from models_app.models import Asset, Team


@dataclass(frozen=True)
class ImageSource:
    """Either an existing asset of the team, or new content with the name it came with."""

    name: str
    content: bytes | None = None
    asset: Asset | None = None
    sidecar_caption: str = ""  # a kohya-style .txt beside a server file


def source_from_asset_id(*, team: Team, asset_id: str, field: str) -> ImageSource:
    asset = Asset.objects.filter(team=team, public_id=asset_id).first() if public_id_plausible(asset_id) else None
    if asset is None:
        raise InvalidInput(f"asset {asset_id!r} not found", field=field)
    return ImageSource(name=asset.original_name, asset=asset)


def source_from_data_url(*, data: str, name: str, field: str) -> ImageSource:
    header, comma, payload = data.partition(",")
    if not data.startswith("data:") or not comma or ";base64" not in header:
        raise InvalidInput(f"{field} must be a base64 data URL (data:image/png;base64,...)", field=field)
    try:
        content = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{field} is not valid base64", field=field) from exc
    return ImageSource(name=name or "image", content=content)


def source_from_import_path(*, path: str, field: str) -> ImageSource:
    resolved = path_inside_roots(path, field=field, roots=settings.TRAINING_IMPORT_ROOTS, what="import folders")
    if not resolved.is_file():
        raise InvalidInput(f"{path!r} is not a file", field=field)
    if resolved.stat().st_size > settings.IMAGE_MAX_BYTES:
        raise InvalidInput(f"{path!r} is larger than {settings.IMAGE_MAX_BYTES} bytes", field=field)
    sidecar = resolved.with_suffix(".txt")
    caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
    return ImageSource(name=resolved.name, content=resolved.read_bytes(), sidecar_caption=caption)


def check_url_host(url: str, field: str) -> None:
    """An outbound URL (an image to fetch now, a webhook to call now): fully valid, and its host resolves
    to public addresses only, unless IMAGE_URL_ALLOW_PRIVATE_HOSTS (tests serve on loopback)."""
    url_check(url, field=field, allow_private=settings.IMAGE_URL_ALLOW_PRIVATE_HOSTS, must_resolve=True)


def source_from_url(*, url: str, field: str) -> ImageSource:
    """Download an image, re-checking every redirect's host and bounding size and time."""
    deadline = time.monotonic() + settings.IMAGE_URL_TIMEOUT_SECONDS
    limit = settings.IMAGE_MAX_BYTES
    current = url
    with httpx.Client(timeout=settings.IMAGE_URL_TIMEOUT_SECONDS, follow_redirects=False) as client:
        for _ in range(settings.IMAGE_URL_MAX_REDIRECTS + 1):
            check_url_host(current, field)
            try:
                with client.stream("GET", current, headers={"Accept": "image/*"}) as response:
                    if response.is_redirect and "location" in response.headers:
                        current = urljoin(current, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise InvalidInput(f"{url!r} answered HTTP {response.status_code}", field=field)
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise InvalidInput(f"{url!r} is larger than {limit} bytes", field=field)
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise InvalidInput(f"{url!r} is larger than {limit} bytes", field=field)
                        if time.monotonic() > deadline:
                            raise InvalidInput(f"{url!r} took longer than the download limit", field=field)
                        chunks.append(chunk)
            except httpx.HTTPError as exc:
                raise InvalidInput(f"{url!r} could not be downloaded ({type(exc).__name__})", field=field) from exc
            name = unquote(PurePosixPath(urlsplit(current).path).name) or "image"
            return ImageSource(name=name, content=b"".join(chunks))
    raise InvalidInput(f"{url!r} redirected more than {settings.IMAGE_URL_MAX_REDIRECTS} times", field=field)


def source_from_reference(*, team: Team, value: object, field: str) -> ImageSource:
    """One string naming an image: `asset_…`, an http(s) URL, a data URL, or a path under the import roots."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a non-empty string", field=field)
    value = value.strip()
    if value.startswith("asset_"):
        return source_from_asset_id(team=team, asset_id=value, field=field)
    if value.startswith("data:"):
        return source_from_data_url(data=value, name="image", field=field)
    if "://" in value:
        return source_from_url(url=value, field=field)
    return source_from_import_path(path=value, field=field)
