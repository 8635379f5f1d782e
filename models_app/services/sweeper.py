"""The orphan sweep: what a killed process leaves behind, found, reported, then removed.

Three kinds of leftovers, each swept only once it is older than a grace period
(`ORPHAN_GRACE_SECONDS`, 24 h by default):

- stored files: files in default storage, under the folders our FileFields write to, that no row
  names. A service stores a file first and commits its row after, so a process killed in between
  leaves a file without a row; the grace protects a file whose row is not committed *yet*.
- temporary uploads: Django's `tmp*.upload*` files (TemporaryFileUploadHandler) in
  FILE_UPLOAD_TEMP_DIR (else the system temp folder), left by a web worker killed mid-body.
- work folders: a worker's per-task folders under TRAINING_WORK_DIR whose task is finished or gone,
  and generation scratch folders a killed generation left. A folder of a task that is not finished
  is never touched, whatever its age.
- compile caches: files under COMPILE_CACHE_DIR (torch.compile's Inductor and Triton kernels) that no
  compile has written for the grace period; a later run that needs one compiles it again.

Stored files are read through the storage API (listdir, get_modified_time, size, delete), so the
sweep works the same on local disk and on S3-compatible storage. Work folders and temporary uploads
are on this machine's disk: each machine that trains or serves uploads sweeps its own.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from django.conf import settings
from django.core.files.storage import Storage, default_storage
from django.db import models
from django.utils import timezone

from models_app.errors import InvalidInput
from models_app.models import (
    TASK_TRANSITIONS,
    Asset,
    GenerationJob,
    TrainingCheckpoint,
    TrainingSample,
    TrainingTask,
)

logger = logging.getLogger(__name__)


# Storage folder -> the FileFields whose names live under it (see the models' `upload_to`), and the
# JSON field of storage names that TrainingCheckpoint keeps. A new FileField must be listed here, or
# its files are never swept (a test checks that every FileField is).
STORED_FILE_FIELDS: dict[str, tuple[tuple[type[models.Model], str], ...]] = {
    "assets": ((Asset, "file"),),
    "thumbnails": ((Asset, "thumbnail"),),
    "training": (
        (TrainingTask, "weights"),
        (TrainingTask, "weights_kohya"),
        (TrainingSample, "file"),
    ),
}
STORED_NAME_LISTS: dict[str, Callable[[], Iterator[str]]] = {
    "training": lambda: (
        name
        for files in TrainingCheckpoint.objects.values_list("files", flat=True).iterator(chunk_size=2000)
        for name in (files or {}).values()
        if isinstance(name, str)
    ),
}

# Django's TemporaryUploadedFile is tempfile.NamedTemporaryFile(suffix=".upload" + extension):
# "tmp", 8 characters of tempfile's alphabet, ".upload", then the uploaded name's extension.
TEMPORARY_UPLOAD_NAME = re.compile(r"tmp[a-z0-9_]{8}\.upload(\.[^/]*)?")

# A training's own folder is named by its task id; generations work in temporary folders here.
SCRATCH_FOLDER = "scratch"
FINISHED_TASK_STATUSES = frozenset(status for status, following in TASK_TRANSITIONS.items() if not following)


class OrphanKind(StrEnum):
    STORED_FILE = "stored_file"
    TEMPORARY_UPLOAD = "temporary_upload"
    WORK_FOLDER = "work_folder"
    COMPILE_CACHE = "compile_cache"


@dataclass(frozen=True)
class Orphan:
    kind: OrphanKind
    location: str  # a storage name (stored files) or a path on this machine's disk
    size_bytes: int
    modified_at: datetime


@dataclass
class SweepReport:
    grace_seconds: int
    remove: bool
    found: list[Orphan] = field(default_factory=list)
    removed: list[Orphan] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def totals(self, orphans: list[Orphan]) -> dict[str, dict[str, int]]:
        """Count and bytes per kind (every kind present, zero when none)."""
        totals = {kind.value: {"count": 0, "bytes": 0} for kind in OrphanKind}
        for orphan in orphans:
            totals[orphan.kind]["count"] += 1
            totals[orphan.kind]["bytes"] += orphan.size_bytes
        return totals

    def as_dict(self, *, locations_max: int = 200) -> dict[str, object]:
        """A summary small enough to keep as a django-q2 result: totals, and at most `locations_max`
        locations of each list (the full lists are in the log)."""
        return {
            "grace_seconds": self.grace_seconds,
            "remove": self.remove,
            "found": self.totals(self.found),
            "removed": self.totals(self.removed),
            "found_locations": [orphan.location for orphan in self.found[:locations_max]],
            "removed_locations": [orphan.location for orphan in self.removed[:locations_max]],
            "locations_left_out": max(0, len(self.found) - locations_max),
            "errors": self.errors[:locations_max],
        }


def orphan_grace_seconds() -> int:
    return int(settings.ORPHAN_GRACE_SECONDS)


def orphans_find(*, grace_seconds: int | None = None, now: datetime | None = None) -> list[Orphan]:
    """Every orphan older than the grace: stored files, temporary uploads, work folders (in that order)."""
    grace = orphan_grace_seconds() if grace_seconds is None else grace_seconds
    if grace < 0:
        raise InvalidInput(f"the grace period must be 0 or more seconds; got {grace}", field="grace_seconds")
    cutoff = (now or timezone.now()) - timedelta(seconds=grace)
    return [
        *_stored_orphans(default_storage, cutoff),
        *_temporary_uploads(cutoff),
        *_work_folders(cutoff),
        *_compile_cache_files(cutoff),
    ]


def orphans_sweep(*, remove: bool, grace_seconds: int | None = None) -> SweepReport:
    """Find the orphans older than the grace and, when `remove`, delete them. The report lists what was
    found and what was deleted; a deletion that fails is reported in `errors` and the sweep goes on."""
    grace = orphan_grace_seconds() if grace_seconds is None else grace_seconds
    report = SweepReport(grace_seconds=grace, remove=remove, found=orphans_find(grace_seconds=grace))
    for orphan in report.found:
        logger.info("orphan %s %s (%d bytes)", orphan.kind.value, orphan.location, orphan.size_bytes)
    if not remove:
        return report
    for orphan in report.found:
        try:
            _remove(orphan)
        except FileNotFoundError:
            continue  # gone meanwhile: nothing left to remove
        except OSError as exc:
            report.errors.append(f"{orphan.location}: {exc}")
            logger.warning("could not remove orphan %s: %s", orphan.location, exc)
            continue
        report.removed.append(orphan)
        logger.info("removed orphan %s %s", orphan.kind.value, orphan.location)
    return report


def _remove(orphan: Orphan) -> None:
    if orphan.kind == OrphanKind.STORED_FILE:
        default_storage.delete(orphan.location)
    elif orphan.kind in (OrphanKind.TEMPORARY_UPLOAD, OrphanKind.COMPILE_CACHE):
        os.unlink(orphan.location)
    else:
        shutil.rmtree(orphan.location)


# Stored files


def _referenced_names(folder: str) -> set[str]:
    """Every storage name under `folder` that some row names, loaded in bulk (one query per field)."""
    names: set[str] = set()
    for model, field_name in STORED_FILE_FIELDS.get(folder, ()):
        names.update(
            name
            for name in model._default_manager.exclude(**{field_name: ""})
            .values_list(field_name, flat=True)
            .iterator(chunk_size=2000)
            if name
        )
    if folder in STORED_NAME_LISTS:
        names.update(STORED_NAME_LISTS[folder]())
    return names


def _storage_files(storage: Storage, folder: str) -> Iterator[str]:
    try:
        directories, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        yield f"{folder}/{name}"
    for directory in directories:
        yield from _storage_files(storage, f"{folder}/{directory}")


def _stored_orphans(storage: Storage, cutoff: datetime) -> Iterator[Orphan]:
    for folder in STORED_FILE_FIELDS:
        # The references are read before the listing: a file stored and committed after this read is
        # younger than the grace, so it is skipped below however the two interleave.
        referenced = _referenced_names(folder)
        for name in _storage_files(storage, folder):
            if name in referenced:
                continue
            try:
                modified = storage.get_modified_time(name)
                if modified > cutoff:
                    continue
                size = storage.size(name)
            except FileNotFoundError:
                continue
            yield Orphan(OrphanKind.STORED_FILE, name, size, modified)


# Temporary uploads


def temporary_upload_dir() -> Path:
    return Path(settings.FILE_UPLOAD_TEMP_DIR or tempfile.gettempdir())


def _temporary_uploads(cutoff: datetime) -> Iterator[Orphan]:
    folder = temporary_upload_dir()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    own_user = os.getuid()
    for entry in entries:
        if not TEMPORARY_UPLOAD_NAME.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        # A shared temp folder holds other programs' and users' files: only our own regular files.
        if not stat.S_ISREG(info.st_mode) or info.st_uid != own_user:
            continue
        modified = datetime.fromtimestamp(info.st_mtime, tz=UTC)
        if modified <= cutoff:
            yield Orphan(OrphanKind.TEMPORARY_UPLOAD, str(folder / entry.name), info.st_size, modified)


# Work folders


def _tree_stats(path: Path) -> tuple[datetime, int]:
    """The newest modification time of anything in the tree (a running job keeps touching its folder),
    and the bytes of its files. Links are not followed."""
    newest = path.lstat().st_mtime
    total = 0
    for root, directories, files in os.walk(path):
        for name in [*directories, *files]:
            try:
                info = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            newest = max(newest, info.st_mtime)
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return datetime.fromtimestamp(newest, tz=UTC), total


def _task_folder_id(name: str) -> uuid.UUID | None:
    try:
        key = uuid.UUID(name)
    except ValueError:
        return None
    return key if str(key) == name else None


def _work_folders(cutoff: datetime) -> Iterator[Orphan]:
    root = Path(settings.TRAINING_WORK_DIR)
    if not root.is_dir():
        return
    task_folders: dict[uuid.UUID, Path] = {}
    for path in root.iterdir():
        if path.is_dir() and not path.is_symlink():
            key = _task_folder_id(path.name)
            if key is not None:
                task_folders[key] = path
    statuses = dict(TrainingTask.objects.filter(pk__in=list(task_folders)).values_list("pk", "status"))
    for key, path in sorted(task_folders.items(), key=lambda item: item[1].name):
        status = statuses.get(key)
        if status is not None and status not in FINISHED_TASK_STATUSES:
            continue  # queued or running: its checkpoints and cache are in use
        modified, size = _tree_stats(path)
        if modified <= cutoff:
            yield Orphan(OrphanKind.WORK_FOLDER, str(path), size, modified)
    yield from _scratch_folders(root / SCRATCH_FOLDER, cutoff)


def _scratch_folders(scratch: Path, cutoff: datetime) -> Iterator[Orphan]:
    """A generation's temporary folder outlives it only when its process was killed. Scratch folders
    are not named by job, so none is touched while any generation job is running."""
    if not scratch.is_dir() or GenerationJob.objects.filter(status=GenerationJob.Status.RUNNING).exists():
        return
    for path in sorted(scratch.iterdir()):
        if path.is_dir() and not path.is_symlink():
            modified, size = _tree_stats(path)
            if modified <= cutoff:
                yield Orphan(OrphanKind.WORK_FOLDER, str(path), size, modified)


# Compile caches


def _compile_cache_files(cutoff: datetime) -> Iterator[Orphan]:
    """Regular files of torch.compile's caches not written since the cutoff (links are not followed)."""
    root = Path(settings.COMPILE_CACHE_DIR)
    if not root.is_dir():
        return
    for folder, _directories, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            modified = datetime.fromtimestamp(info.st_mtime, tz=UTC)
            if stat.S_ISREG(info.st_mode) and modified <= cutoff:
                yield Orphan(OrphanKind.COMPILE_CACHE, path, info.st_size, modified)
