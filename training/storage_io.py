"""Moving files between Django's storage (local disk or S3-compatible) and the worker's local disk."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.db.models.fields.files import FieldFile


def stored_name(field_file: FieldFile) -> str:
    """The file's name in its storage; an empty file field is an error here, never a path."""
    if not field_file.name:
        raise ValueError(f"{field_file.field.name} has no stored file")
    return field_file.name


def local_copy(field_file: FieldFile, destination: Path) -> Path:
    """A local file with the stored file's content: copied through the storage API, so remote stores work."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    with field_file.storage.open(stored_name(field_file), "rb") as source, open(partial, "wb") as target:
        shutil.copyfileobj(source, target, length=1024 * 1024)
    partial.replace(destination)
    return destination
