"""Moving files between Django's storage (local disk or S3-compatible) and the worker's local disk."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.db.models.fields.files import FieldFile


def local_copy(field_file: FieldFile, destination: Path) -> Path:
    """A local file with the stored file's content: copied through the storage API, so remote stores work."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    with field_file.storage.open(field_file.name, "rb") as source, open(partial, "wb") as target:
        shutil.copyfileobj(source, target, length=1024 * 1024)
    partial.replace(destination)
    return destination
