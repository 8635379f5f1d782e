"""Storage copies of a training's files: its weights, sample images and checkpoints.

The worker's files live on its own disk; these are the only functions that copy them into Django's
storage (local disk or S3-compatible), under the names `models_app/models.py`'s upload_to functions
give, and remove the copies a task no longer needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from models_app.models import TrainingCheckpoint, TrainingSample, TrainingTask, checkpoint_upload_to


def task_weights_store(*, task_id: Any, weights_path: Path, kohya_path: Path | None = None) -> dict[str, str]:
    """Store a finished training's weights (and its kohya-layout copy) under the task's names; returns
    the task's field values naming them. Nothing is written to the task row here."""
    task = TrainingTask.objects.only("pk").get(pk=task_id)
    with open(weights_path, "rb") as handle:
        task.weights.save(Path(weights_path).name, File(handle), save=False)
    stored = {"weights": str(task.weights.name)}
    if kohya_path is not None:
        with open(kohya_path, "rb") as handle:
            task.weights_kohya.save(Path(kohya_path).name, File(handle), save=False)
        stored["weights_kohya"] = str(task.weights_kohya.name)
    return stored


def stored_files_delete(names: Iterable[str | None]) -> None:
    """Remove stored copies (names as the storage gave them; empty ones skipped)."""
    for name in filter(None, names):
        default_storage.delete(name)


def training_task_add_sample(*, task_id: Any, step: int, prompt: str, path: Path) -> TrainingSample:
    """Store a sample image the running training made, under the task's folder."""
    index = int(Path(path).stem.rsplit("-", 1)[-1]) if "-" in Path(path).stem else 0
    sample = TrainingSample(task_id=task_id, step=step, prompt=prompt, index=index)
    with open(path, "rb") as handle:
        sample.file.save(Path(path).name, File(handle), save=False)
    TrainingSample.objects.filter(task_id=task_id, step=step, index=index).delete()  # a resumed run re-samples
    sample.save()
    return sample


def training_checkpoint_record(
    *, task_id: Any, step: int, folder: Path, keep: int, snapshot: bool = False
) -> TrainingCheckpoint:
    """Mirror a checkpoint folder to storage, and keep only the newest `keep` there too.

    A `snapshot` is the worker's own crash-safety save: only the newest one per task is kept, and it
    neither counts against the user's `keep` nor is listed as one of their checkpoints.
    """
    checkpoint = TrainingCheckpoint(task_id=task_id, step=step, snapshot=snapshot)
    files = {}
    for path in sorted(Path(folder).iterdir()):
        with open(path, "rb") as handle:
            files[path.name] = default_storage.save(checkpoint_upload_to(checkpoint, path.name), File(handle))
    checkpoint.files = files
    # The new row and the pruning of the old ones commit together: a worker killed at any point leaves
    # either the old rows or the new set, never more than `keep` (the files of pruned rows go after the
    # commit; a kill in between leaves only unreferenced files, which the orphan sweep removes).
    with transaction.atomic():
        replaced = list(TrainingCheckpoint.objects.filter(task_id=task_id, step=step, snapshot=snapshot))
        for old in replaced:  # a resumed run saves the same step again
            old.delete()
        checkpoint.save()
        same_kind = TrainingCheckpoint.objects.filter(task_id=task_id, snapshot=snapshot)
        # One snapshot per task, the one just made; the user's newest `keep` checkpoints.
        stale = list(same_kind.exclude(pk=checkpoint.pk) if snapshot else same_kind.order_by("-step")[keep:])
        for old in stale:
            old.delete()
    for old in [*replaced, *stale]:
        stored_files_delete(name for name in old.files.values() if name not in files.values())
    return checkpoint
