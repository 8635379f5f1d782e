"""The worker protocol: how a worker takes, runs and hands back a training task.

Claim (a conditional PENDING -> PREPROCESSING with a lease), heartbeat and progress (each renews the
lease; a lost lease raises LeaseLost), the move to TRAINING, completion with the stored weights,
failure (re-queued while attempts remain), a clean hand-back at shutdown, and the reaper that
re-queues what a lost worker held and tops up the start messages. Durable cancel: a task with a
cancel request is never re-queued or resumed, it ends CANCELLED.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from models_app.models import Model, TrainingTask, WorkerMachine
from models_app.services.queue import queue_send, queue_waiting
from models_app.services.task_files import stored_files_delete, task_weights_store
from models_app.services.task_states import log_tail, task_transition

START_MESSAGE = "training.tasks.run_next_training"


# The most start messages one start sends (one per training machine that has registered).
WAKE_MESSAGES_MAX = 8


def wake_messages() -> int:
    """How many start messages a start sends: one per training machine (WorkerMachine rows), at least one.

    django-q2's clusters take messages ahead of their workers: a cluster whose every worker is training holds
    one message it has taken until a worker is free (hours, for a training), so a single message may sit
    there while another cluster is idle. A cluster takes at most that one message ahead, so one message per
    cluster reaches every idle cluster at once; the messages the busy ones hold claim whatever is pending when
    they run, or nothing."""
    return max(1, min(WAKE_MESSAGES_MAX, WorkerMachine.objects.count()))


def training_task_enqueue(*, task_id: str | None = None) -> str:
    """Put "run the next training" messages on django-q2's queue (`wake_messages` of them).

    A message names no task: the worker that takes it claims the best pending task at that moment
    (highest priority, then oldest), so priority decides the order with any broker, and a message
    that finds nothing to claim is harmless.
    """
    ids = [
        queue_send(START_MESSAGE, queue=settings.TRAINING_QUEUE, task_name="training", group="training")
        for _ in range(wake_messages())
    ]
    queue_id = ids[0]
    if task_id is not None:
        TrainingTask.objects.filter(pk=task_id).update(celery_training_task_id=queue_id)
    return queue_id


def _claim_fields(worker_id: str) -> dict[str, Any]:
    now = timezone.now()
    return {
        "worker_id": worker_id,
        "attempt_count": F("attempt_count") + 1,
        "lease_expires_at": now + timedelta(seconds=settings.TRAINING_LEASE_SECONDS),
        "started_at": now,
        "preprocessing_started_at": now,
        "preprocessing_stage": "starting",
        "processed_files_count": 0,
    }


def training_task_claim(
    *, task_id: str, worker_id: str, machine: str = "", devices: list[int] | None = None
) -> TrainingTask | None:
    """Take this pending task for this worker, or None if another worker (or a cancel) got there first.
    `devices`: the GPUs of `machine` it holds while it runs (machines.machine_claim chose them).

    A pending task never carries a cancel request (a cancel of a queued task ends it at once, and a
    requeue honours one), but should one be found it is finalised CANCELLED here, never run."""
    where: dict[str, Any] = {"cancel_requested_at__isnull": True}
    if devices is not None:
        where["gpus__lte"] = len(devices)  # a task is never claimed with fewer devices than it asks
    if not task_transition(
        task_id,
        TrainingTask.Status.PREPROCESSING,
        expected=(TrainingTask.Status.PENDING,),
        fields={**_claim_fields(worker_id), "machine": machine, "devices": list(devices or [])},
        where=where,
    ):
        task_transition(
            task_id,
            TrainingTask.Status.CANCELLED,
            expected=(TrainingTask.Status.PENDING,),
            where={"cancel_requested_at__isnull": False},
            fields={"completed_at": timezone.now(), "lease_expires_at": None},
        )
        return None
    return TrainingTask.objects.select_related("model", "team").get(pk=task_id)


def training_task_claim_next(*, worker_id: str) -> TrainingTask | None:
    """Take the best pending task (highest priority, then oldest); None when there is none left."""
    for _ in range(20):  # another worker may take the head of the queue between our read and our update
        task_id = (
            TrainingTask.objects.filter(status=TrainingTask.Status.PENDING)
            .order_by("-priority", "created_at", "pk")
            .values_list("pk", flat=True)
            .first()
        )
        if task_id is None:
            return None
        claimed = training_task_claim(task_id=str(task_id), worker_id=worker_id)
        if claimed is not None:
            return claimed
    return None


def training_task_heartbeat(*, task_id: Any, worker_id: str) -> bool:
    """Renew the lease; False when the task is no longer this worker's."""
    return bool(
        TrainingTask.objects.filter(pk=task_id, worker_id=worker_id, status__in=TrainingTask.RUNNING_STATUSES).update(
            lease_expires_at=timezone.now() + timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
        )
    )


class LeaseLost(Exception):
    """The task is no longer this worker's (reaped, or finished elsewhere): stop without writing."""


def training_task_record_progress(*, task_id: Any, worker_id: str, fields: dict[str, Any]) -> bool:
    """Write progress fields and renew the lease. Returns whether a cancel was requested."""
    now = timezone.now()
    updated = TrainingTask.objects.filter(
        pk=task_id, worker_id=worker_id, status__in=TrainingTask.RUNNING_STATUSES
    ).update(lease_expires_at=now + timedelta(seconds=settings.TRAINING_LEASE_SECONDS), updated_at=now, **fields)
    if not updated:
        raise LeaseLost(f"training task {task_id} is no longer held by {worker_id}")
    return TrainingTask.objects.filter(pk=task_id, cancel_requested_at__isnull=False).exists()


def training_task_begin_training(*, task_id: Any, worker_id: str, fields: dict[str, Any]) -> None:
    if not task_transition(
        task_id,
        TrainingTask.Status.TRAINING,
        expected=(TrainingTask.Status.PREPROCESSING,),
        worker_id=worker_id,
        fields={**fields, "preprocessing_completed_at": timezone.now()},
    ):
        raise LeaseLost(f"training task {task_id} is no longer held by {worker_id}")


def training_task_complete(
    *, task_id: Any, worker_id: str, weights_path: Path, fields: dict[str, Any], kohya_path: Path | None = None
) -> bool:
    """Publish the weights and mark the task COMPLETED and its model ready, once.

    The files are stored under the task's own names first; if the task was meanwhile taken from
    this worker, the stored files are removed and nothing else changes.
    """
    stored = task_weights_store(task_id=task_id, weights_path=weights_path, kohya_path=kohya_path)
    now = timezone.now()
    with transaction.atomic():
        moved = task_transition(
            task_id,
            TrainingTask.Status.COMPLETED,
            expected=(TrainingTask.Status.TRAINING,),
            worker_id=worker_id,
            fields={
                **fields,
                **stored,
                "completed_at": now,
                "progress": 100.0,
                "eta_seconds": 0,
                "lease_expires_at": None,
                "failure_reason": "",  # an earlier attempt's (worker_lost, say) no longer describes the task
            },
        )
        if moved:
            model_uuid = TrainingTask.objects.filter(pk=task_id).values_list("model_id", flat=True).get()
            Model.objects.filter(uuid=model_uuid).update(trained_task=task_id)  # type: ignore[misc]
    if not moved:
        stored_files_delete(stored.values())
    return moved


def training_task_fail(
    *,
    task_id: Any,
    worker_id: str | None,
    message: str,
    reason: str = "bad_input",
    retriable: bool = False,
    fields: dict[str, Any] | None = None,
) -> str:
    """End an attempt that failed: re-queue it if the failure may pass and attempts remain, else fail it.

    Returns the task's new status, or "" if the task was no longer this worker's.
    """
    task = (
        TrainingTask.objects.filter(pk=task_id)
        .only("attempt_count", "max_attempts", "logs", "cancel_requested_at")
        .first()
    )
    if task is None:
        return ""
    if task.cancel_requested_at is not None:
        # The user asked to stop before this attempt ended: that is the outcome, whatever broke.
        moved = _cancel_running(task_id, worker_id, note=f"cancelled as requested (the attempt ended: {message})")
        return TrainingTask.Status.CANCELLED if moved else ""
    expected = (TrainingTask.Status.PENDING, *TrainingTask.RUNNING_STATUSES)
    if retriable and task.attempt_count < task.max_attempts:
        note = f"attempt {task.attempt_count} of {task.max_attempts} failed ({message}); re-queued"
        return _requeue(
            task_id, worker_id, note=note, logs=task.logs, fields={**(fields or {}), "failure_reason": reason}
        )
    if retriable:
        message = f"{message} (gave up after {task.attempt_count} attempts)"
    moved = task_transition(
        task_id,
        TrainingTask.Status.FAILED,
        expected=expected,
        worker_id=worker_id,
        fields={
            **(fields or {}),
            "error_message": message,
            "failure_reason": reason,
            "completed_at": timezone.now(),
            "lease_expires_at": None,
        },
    )
    return TrainingTask.Status.FAILED if moved else ""


@dataclass
class ReapReport:
    requeued: list[str]
    failed: list[str]
    enqueued: int
    cancelled: list[str]


def training_tasks_reap() -> ReapReport:
    """Re-queue tasks whose worker stopped renewing its lease (or fail them after max_attempts), and make
    sure every pending task has a queue message to start it."""
    report = ReapReport(requeued=[], failed=[], enqueued=0, cancelled=[])
    expired = TrainingTask.objects.filter(
        status__in=TrainingTask.RUNNING_STATUSES, lease_expires_at__lt=timezone.now()
    ).values_list("pk", "worker_id")
    for task_id, worker_id in expired:
        outcome = training_task_fail(
            task_id=task_id,
            worker_id=worker_id,
            message=f"the worker {worker_id or '(unknown)'} stopped answering",
            reason="worker_lost",
            retriable=True,
        )
        if outcome == TrainingTask.Status.PENDING:
            report.requeued.append(str(task_id))
        elif outcome == TrainingTask.Status.FAILED:
            report.failed.append(str(task_id))
        elif outcome == TrainingTask.Status.CANCELLED:  # its cancel request outlived its worker
            report.cancelled.append(str(task_id))
    report.enqueued = training_queue_top_up()
    return report


def training_queue_top_up() -> int:
    """Add start messages so that every pending task has one waiting (a lost message, a crashed web
    process, a message taken by a cluster that was then killed). Extra messages are harmless: each
    claims the best pending task or finds none."""
    pending = TrainingTask.objects.filter(status=TrainingTask.Status.PENDING).count()
    if not pending:
        return 0
    waiting = queue_waiting(START_MESSAGE, queue=settings.TRAINING_QUEUE)
    if waiting is None:
        # A broker that cannot be read: a message for each task waiting unusually long.
        waiting = (
            pending
            - TrainingTask.objects.filter(
                status=TrainingTask.Status.PENDING, updated_at__lt=timezone.now() - timedelta(minutes=2)
            ).count()
        )
    missing = max(0, pending - waiting)
    for _ in range(missing):
        training_task_enqueue()
    return missing


def training_task_release(*, task_id: Any, worker_id: str, step: int, fields: dict[str, Any] | None = None) -> str:
    """Hand a running task back to the queue because its worker is shutting down (not a failure): the
    attempt is not counted, and the next worker resumes from the snapshot saved at `step`. A task
    with a pending cancel ends cancelled instead. Returns the new status, or "" if it was not ours."""
    fields = dict(fields or {})
    where = f"the snapshot at step {step}" if step else "the start"
    return _requeue(
        task_id,
        worker_id,
        note=f"worker {worker_id} shut down; re-queued to resume from {where}",
        logs=TrainingTask.objects.filter(pk=task_id).values_list("logs", flat=True).first() or "",
        fields={
            **fields,
            **({"current_step": step} if step else {}),
            "attempt_count": F("attempt_count") - 1,  # a clean hand-over is not a lost attempt
        },
    )


def _requeue(task_id: Any, worker_id: str | None, *, note: str, logs: str, fields: dict[str, Any]) -> str:
    """Put a running task back in the queue (its log says why) and queue a start message for it; a task
    with a pending cancel ends CANCELLED instead. Returns the new status, or "" if it was not ours."""
    stamped = f"{timezone.now():%Y-%m-%d %H:%M:%S} {note}"
    with transaction.atomic():
        moved = task_transition(
            task_id,
            TrainingTask.Status.PENDING,
            expected=TrainingTask.RUNNING_STATUSES,
            worker_id=worker_id,
            where={"cancel_requested_at__isnull": True},
            fields={
                **fields,
                "logs": log_tail(fields.get("logs", logs), [stamped]),
                "worker_id": "",
                "lease_expires_at": None,
            },
        )
        if moved:
            transaction.on_commit(lambda: training_task_enqueue(task_id=str(task_id)))
            return TrainingTask.Status.PENDING
    dropped = ("attempt_count", "current_step", "failure_reason")
    cancel_fields = {name: value for name, value in fields.items() if name not in dropped}
    if _cancel_running(task_id, worker_id, note=f"{note.split(';')[0]}; cancelled as requested", fields=cancel_fields):
        return TrainingTask.Status.CANCELLED
    return ""


def _cancel_running(task_id: Any, worker_id: str | None, *, note: str, fields: dict[str, Any] | None = None) -> bool:
    """End a running task that has a cancel request as CANCELLED (credits for unrun steps refunded)."""
    fields = dict(fields or {})
    logs = fields.pop("logs", None)
    if logs is None:
        logs = TrainingTask.objects.filter(pk=task_id).values_list("logs", flat=True).first() or ""
    stamped = f"{timezone.now():%Y-%m-%d %H:%M:%S} {note}"
    return task_transition(
        task_id,
        TrainingTask.Status.CANCELLED,
        expected=TrainingTask.RUNNING_STATUSES,
        worker_id=worker_id,
        where={"cancel_requested_at__isnull": False},
        fields={**fields, "logs": log_tail(logs, [stamped]), "completed_at": timezone.now(), "lease_expires_at": None},
    )


def training_task_cancelled(*, task_id: Any, worker_id: str, fields: dict[str, Any] | None = None) -> bool:
    """The runner stopped a running task because its cancel was requested."""
    return task_transition(
        task_id,
        TrainingTask.Status.CANCELLED,
        expected=TrainingTask.RUNNING_STATUSES,
        worker_id=worker_id,
        fields={**(fields or {}), "completed_at": timezone.now(), "lease_expires_at": None},
    )
