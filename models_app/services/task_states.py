"""A training task's status changes: the lock order, the conditional move, and the task log.

A task's status moves only along `TASK_TRANSITIONS`, with a conditional UPDATE so that two
processes can never both make the same move; its model's status, its credits and its webhook
follow in the same transaction. The user's side (models_app/services/training.py) and the
worker's (models_app/services/worker_protocol.py) both move tasks through `task_transition`.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from models_app.models import MODEL_STATUS_FOR_TASK, TASK_TRANSITIONS, Model, Team, TrainingTask
from models_app.services.credits import credits_settle
from models_app.services.webhooks import webhook_emit

LOG_TAIL_CHARS = 20_000


EVENT_FOR_STATUS: dict[str, str] = {
    TrainingTask.Status.PENDING: "queued",
    TrainingTask.Status.PREPROCESSING: "started",
    TrainingTask.Status.COMPLETED: "completed",
    TrainingTask.Status.FAILED: "failed",
    TrainingTask.Status.CANCELLED: "cancelled",
}


def task_rows_lock(task_id: Any) -> bool:
    """Lock, for the rest of the transaction, the rows a change of this task writes besides its own.

    LOCK ORDER. Every transaction that writes more than one of a model's, its team's and a task's rows
    takes their locks in this order: the Model row, then the Team row, then the TrainingTask row (then
    rows that belong to them: credit entries, webhook deliveries, checkpoints). Starting a training
    (model, team, new task), cancelling one, and every worker transition (claim, requeue, complete,
    fail) follow it, so two of them wait for each other instead of deadlocking. A claim takes its worker
    machine's row first (models_app/services/machines.py: the machine, then these). A task's model and team
    never change, so reading their ids first, unlocked, is safe. False if the task does not exist.
    """
    ids = TrainingTask.objects.filter(pk=task_id).values_list("model_id", "team_id").first()
    if ids is None:
        return False
    model_uuid, team_id = ids
    # django-stubs types model_id as Model's pk (int); the foreign key is to_field="uuid".
    list(Model.objects.select_for_update().filter(uuid=model_uuid).values_list("pk", flat=True))  # type: ignore[misc]
    list(Team.objects.select_for_update().filter(pk=team_id).values_list("pk", flat=True))
    return True


def task_transition(
    task_id: Any,
    to_status: str,
    *,
    expected: tuple[str, ...],
    fields: dict[str, Any] | None = None,
    worker_id: str | None = None,
    where: dict[str, Any] | None = None,
) -> bool:
    """Move the task if it is still in one of `expected` (and owned by worker_id, and matching `where`);
    sync its model, settle its credits and emit its webhook in the same transaction."""
    for status in expected:
        if to_status not in TASK_TRANSITIONS[status]:
            raise ValueError(f"a training task cannot go from {status} to {to_status}")
    with transaction.atomic():
        if not task_rows_lock(task_id):
            return False
        query = TrainingTask.objects.filter(pk=task_id, status__in=expected, **(where or {}))
        if worker_id is not None:
            query = query.filter(worker_id=worker_id)
        moved = query.update(status=to_status, updated_at=timezone.now(), **(fields or {}))
        if moved and not TASK_TRANSITIONS[to_status]:
            credits_settle(task_id=task_id)
        if moved and EVENT_FOR_STATUS.get(to_status):
            webhook_emit(task_id=task_id, event=EVENT_FOR_STATUS[to_status])
        if moved:
            model_uuid = TrainingTask.objects.filter(pk=task_id).values_list("model_id", flat=True).get()
            # Here too model_id is the uuid (to_field), not the int django-stubs assumes.
            Model.objects.filter(uuid=model_uuid).exclude(status=Model.Status.DELETED).update(  # type: ignore[misc]
                status=MODEL_STATUS_FOR_TASK[to_status], updated_at=timezone.now()
            )
        return bool(moved)


def log_tail(existing: str, lines: list[str]) -> str:
    """The task log with new lines appended, cut from the front to a bounded size."""
    text = existing + "".join(f"{line}\n" for line in lines)
    if len(text) > LOG_TAIL_CHARS:
        text = text[-LOG_TAIL_CHARS:]
        text = text[text.find("\n") + 1 :]
    return text
