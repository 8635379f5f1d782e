"""Where an image to add can come from: an asset id, an http(s) URL, a data URL, or a server path.

Each is turned into bytes (or an existing asset) before anything is stored, so a batch with one bad
source stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from django.conf import settings

from models_app.errors import InvalidInput
from models_app.models import Asset, Team


@dataclass(frozen=True)
class ImageSource:
    """Either an existing asset of the team, or new content with the name it came with."""

    name: str
    content: bytes | None = None
    asset: Asset | None = None
    sidecar_caption: str = ""  # a kohya-style .txt beside a server file


def source_from_asset_id(*, team: Team, asset_id: str, field: str) -> ImageSource:
    asset = Asset.objects.filter(team=team, public_id=asset_id).first()
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
    roots = [Path(root).resolve() for root in settings.TRAINING_IMPORT_ROOTS]
    candidate = Path(path).expanduser()
    resolved = (candidate if candidate.is_absolute() else roots[0] / candidate).resolve()
    if not any(root in resolved.parents for root in roots):
        raise InvalidInput(
            f"{path!r} is outside the import folders this server reads ({', '.join(map(str, roots))})", field=field
        )
    if not resolved.is_file():
        raise InvalidInput(f"{path!r} is not a file", field=field)
    if resolved.stat().st_size > settings.IMAGE_MAX_BYTES:
        raise InvalidInput(f"{path!r} is larger than {settings.IMAGE_MAX_BYTES} bytes", field=field)
    sidecar = resolved.with_suffix(".txt")
    caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
    return ImageSource(name=resolved.name, content=resolved.read_bytes(), sidecar_caption=caption)


def check_url_host(url: str, field: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"{url!r}: only http and https URLs are accepted", field=field)
    if not parts.hostname:
        raise InvalidInput(f"{url!r} has no host", field=field)
    if settings.IMAGE_URL_ALLOW_PRIVATE_HOSTS:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"{url!r}: the host {parts.hostname!r} cannot be resolved", field=field) from exc
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise InvalidInput(
                f"{url!r}: the host resolves to a private, loopback or link-local address, which is not allowed",
                field=field,
            )


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
