"""Who may fetch a stored file: whoever holds a URL this server handed out, until it expires.

Every URL of a file that leaves the server (API answers, MCP results, the admin) comes from
`media_url`: on local storage, the file's path with a signature over it and the time it was made
(django.core.signing), checked by the media view; on S3-compatible storage, the store's own
presigned URL (django-storages' `querystring_auth`, expiring after the same time). A bare
`/media/...` path is refused. URLs are absolute: built from the request when there is one, else
from PUBLIC_BASE_URL (the MCP server, commands).
"""

from __future__ import annotations

from urllib.parse import urlencode, urljoin

from django.conf import settings
from django.core import signing
from django.core.files.storage import FileSystemStorage, Storage, default_storage
from django.db.models.fields.files import FieldFile
from django.http import HttpRequest

TOKEN_PARAMETER = "token"
_SALT = "models_app.media"


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=_SALT)


def media_token(name: str) -> str:
    """The `<timestamp>:<signature>` that grants access to the stored file `name` for a while."""
    return _signer().sign(name)[len(name) + 1 :]


def media_token_valid(name: str, token: str) -> bool:
    """Whether `token` was made by this server for exactly `name`, less than MEDIA_URL_MAX_AGE_SECONDS ago."""
    try:
        _signer().unsign(f"{name}:{token}", max_age=settings.MEDIA_URL_MAX_AGE_SECONDS)
    except signing.BadSignature:  # SignatureExpired is one
        return False
    return True


def absolute_url(url: str, request: HttpRequest | None = None) -> str:
    if "://" in url:
        return url
    if request is not None:
        return request.build_absolute_uri(url)
    return urljoin(settings.PUBLIC_BASE_URL.rstrip("/") + "/", url.lstrip("/"))


def media_url(file: FieldFile | str, request: HttpRequest | None = None, *, absolute: bool = True) -> str:
    """The URL by which the holder may fetch this stored file (a FieldFile or a storage name); absolute
    unless `absolute=False` (pages of this server, such as the admin, link to their own host)."""
    storage: Storage = file.storage if isinstance(file, FieldFile) else default_storage
    name = file.name if isinstance(file, FieldFile) else file
    if not name:
        return ""
    url = storage.url(name)
    if isinstance(storage, FileSystemStorage):
        url = f"{url}?{urlencode({TOKEN_PARAMETER: media_token(name)})}"
    return absolute_url(url, request) if absolute else url
