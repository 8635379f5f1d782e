"""Training: start, cancel, and every status change of a training task (the runner's writes too).

A task's status moves only along `TASK_TRANSITIONS`, with a conditional UPDATE so that two
processes can never both make the same move; the model's status follows in the same transaction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from models_app.errors import ApplicationError, Conflict, InsufficientCredits, InvalidInput, LimitReached, NotFound
from models_app.models import (
    MODEL_STATUS_FOR_TASK,
    TASK_TRANSITIONS,
    Model,
    Team,
    TrainingCheckpoint,
    TrainingSample,
    TrainingTask,
    checkpoint_upload_to,
)
from models_app.services.credits import Estimate, credits_reserve, credits_settle, training_estimate
from models_app.services.queue import queue_send, queue_waiting
from models_app.services.webhooks import webhook_emit
from models_app.training_parameters import effective_parameters, validate_parameters

logger = logging.getLogger(__name__)

MIN_PAIRS = 2
# Parameters the engine takes that seed 003's task has no column for, kept in `training_options`.
# The runner hands each one that names a TrainingSpec field to the engine under that name.
ENGINE_OPTIONS = (
    "lr_scheduler",
    "lr_warmup_steps",
    "caption_dropout_rate",
    "gradient_checkpointing",
    "guidance_scale",
    "compile",
    "quantize_base",
    "mixed_precision",
    "lora_type",
    "lora_targets",
    "lora_dropout",
    "repeats",
    "loss_type",
    "huber_delta",
    "min_snr_gamma",
    "noise_offset",
    "timestep_sampling",
    "logit_mean",
    "logit_std",
    "sigmoid_scale",
    "timestep_shift",
    "ema",
    "ema_decay",
    "ema_start_step",
    "train_text_encoder",
    "text_encoder_learning_rate",
    "prior_preservation_class",
    "prior_preservation_weight",
    "masked_loss",
    "validation_split",
    "validation_images",  # not a spec field: the runner marks these images `validation`
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOG_TAIL_CHARS = 20_000


def image_count_bounds(model: Model) -> tuple[int, int]:
    low, high = settings.TRAINING_IMAGE_COUNT_BOUNDS
    return int(low), int(high)


def base_model_resolve(value: str) -> str:
    """A local diffusers folder inside the configured roots, or a hub id; InvalidInput otherwise."""
    field = "base_model_path"
    value = (value or "").strip()
    if not value:
        raise InvalidInput("base_model_path is empty", field=field)
    roots = [Path(root).resolve() for root in settings.TRAINING_BASE_MODEL_ROOTS]
    candidate = Path(value).expanduser()
    looks_like_path = (
        candidate.is_absolute() or value.startswith((".", "~")) or any((root / value).exists() for root in roots)
    )
    if looks_like_path:
        resolved = (candidate if candidate.is_absolute() else _first_existing(roots, value)).resolve()
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise InvalidInput(
                f"base_model_path {value!r} is outside the model folders this server reads "
                f"({', '.join(str(r) for r in roots)})",
                field=field,
            )
        if not (resolved / "model_index.json").is_file():
            raise InvalidInput(
                f"base_model_path {value!r} is not a diffusers model folder (no model_index.json)", field=field
            )
        return str(resolved)
    if HUB_ID.match(value):
        if not settings.TRAINING_ALLOW_HUB_MODELS:
            raise InvalidInput(
                f"base_model_path {value!r} is a hub id, and this server only trains from local model folders",
                field=field,
            )
        return value
    raise InvalidInput(f"base_model_path {value!r} is neither a model folder nor an owner/name hub id", field=field)


def _first_existing(roots: list[Path], relative: str) -> Path:
    for root in roots:
        if (root / relative).exists():
            return root / relative
    return roots[0] / relative


def team_training_limit(team: Team) -> int | None:
    if team.max_parallel_trainings is not None:
        return team.max_parallel_trainings
    return settings.TRAINING_MAX_PARALLEL_PER_TEAM or None


def team_active_trainings(team_id: int) -> int:
    return TrainingTask.objects.filter(team_id=team_id, status__in=TrainingTask.ACTIVE_STATUSES).count()


@dataclass(frozen=True)
class TrainingPlan:
    """What a start would do: the merged parameters, the base model, the estimate, and why it may not."""

    parameters: dict[str, Any]
    base_model: str
    estimate: Estimate
    problems: list[ApplicationError]


def _plan(model: Model, overrides: dict[str, Any] | None) -> TrainingPlan:
    # The stored parameters are checked again with the overrides: a rule added since they were stored
    # (a length limit, say) answers a 400 naming them, not a failure later.
    clean = validate_parameters({**model.parameters, **(overrides or {})})
    params = effective_parameters(clean, default_base_model=settings.TRAINING_DEFAULT_BASE_MODEL)
    base_model = base_model_resolve(params["base_model_path"])
    estimate = training_estimate(
        base_model=base_model,
        steps=params["steps"],
        batch_size=params["batch_size"],
        gradient_accumulation=params["gradient_accumulation"],
        resolution=params["resolution"],
    )
    problems: list[ApplicationError] = []
    if model.status == Model.Status.DELETED:
        problems.append(NotFound(f"model {model.public_id} not found"))
    if TrainingTask.objects.filter(model=model, status__in=TrainingTask.ACTIVE_STATUSES).exists():
        problems.append(Conflict("Model is already training"))
    if model.type == Model.Type.EDIT:
        pairs = model.pairs.count()
        if pairs < MIN_PAIRS:
            problems.append(
                InvalidInput(
                    f"the model has {pairs} before/after pairs; an edit model needs at least {MIN_PAIRS}",
                    field="pairs",
                    extra={"count": pairs, "min": MIN_PAIRS},
                )
            )
        if estimate.family != "flux-kontext":
            problems.append(
                InvalidInput(
                    f"an edit model trains on a FLUX.1 Kontext base model; {base_model!r} is {estimate.family}",
                    field="base_model_path",
                )
            )
    else:
        count = model.training_images.count()
        low, high = image_count_bounds(model)
        if not low <= count <= high:
            problems.append(
                InvalidInput(
                    f"the model has {count} training images; training needs between {low} and {high}",
                    field="training_images",
                    extra={"count": count, "min": low, "max": high},
                )
            )
    problems.extend(_validation_images_problems(model, params["validation_images"]))
    limit = team_training_limit(model.team)
    if limit is not None and team_active_trainings(model.team_id) >= limit:
        problems.append(
            LimitReached(
                f"the team already has {limit} trainings queued or running, its limit",
                extra={"actionName": "parallel-training", "actionLimit": limit},
            )
        )
    balance = model.team.credit_balance
    if balance is not None and balance < estimate.credits:
        problems.append(
            InsufficientCredits(
                f"this training is estimated at {estimate.credits} credits and the team has {balance}",
                extra={"estimate": estimate.as_dict(), "balance": str(balance)},
            )
        )
    return TrainingPlan(parameters=params, base_model=base_model, estimate=estimate, problems=problems)


def _validation_images_problems(model: Model, held_out: list[str]) -> list[ApplicationError]:
    """validation_images must name this model's training images and leave at least one to train on."""
    if not held_out:
        return []
    field = "parameters.validation_images"
    own = set(model.training_images.values_list("asset__public_id", flat=True))
    for asset_id in held_out:
        if asset_id not in own:
            return [
                InvalidInput(
                    f"validation_images names {asset_id}, which is not a training image of model {model.public_id}",
                    field=field,
                )
            ]
    if len(own) - len(set(held_out)) < 1:
        return [
            InvalidInput(
                f"validation_images holds out all {len(own)} training images; at least one must be left to train on",
                field=field,
            )
        ]
    return []


def training_quote(*, model: Model, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dry run of a start: its estimate and whether it would be accepted, with nothing written."""
    model = Model.objects.select_related("team").get(pk=model.pk)
    plan = _plan(model, overrides)
    balance = model.team.credit_balance
    return {
        "dryRun": True,
        "estimate": plan.estimate.as_dict(),
        "balance": None if balance is None else str(balance),
        "canStart": not plan.problems,
        "problems": [{"detail": p.message, "status": p.status_code} for p in plan.problems],
        "parameters": plan.parameters,
    }


@transaction.atomic
def training_start(
    *,
    model: Model,
    overrides: dict[str, Any] | None = None,
    origin: dict[str, str | None] | None = None,
) -> TrainingTask:
    """Queue a training of the model's current dataset with its parameters (and these overrides)."""
    model = Model.objects.select_for_update().get(pk=model.pk)  # LOCK ORDER: model, team, task
    model.team = Team.objects.select_for_update().get(pk=model.team_id)
    plan = _plan(model, overrides)
    if plan.problems:
        raise plan.problems[0]
    params = plan.parameters
    trigger_word = model.trigger_word or _default_trigger_word(model)
    source_images = list(model.training_images.select_related("asset").values_list("asset__public_id", flat=True))

    task = TrainingTask(
        team=model.team,
        model=model,
        trigger_word=trigger_word,
        entity_type=model.type.upper(),
        training_type=params["training_type"],
        rank=params["rank"],
        lora_alpha=params["lora_alpha"],
        steps=params["steps"],
        total_steps=params["steps"],
        learning_rate=params["learning_rate"],
        batch_size=params["batch_size"],
        gradient_accumulation=params["gradient_accumulation"],
        optimizer=params["optimizer"],
        resolution=params["resolution"],
        seed=params["seed"],
        save_every=params["save_every"],
        max_step_saves_to_keep=params["max_step_saves_to_keep"],
        sample_every=params["sample_every"],
        sample_steps=params["sample_steps"],
        sample_prompts=params["sample_prompts"],
        base_model_path=plan.base_model,
        bypass_guidance_embedding=params["bypass_guidance_embedding"],
        preprocessing_transforms=params["preprocessing_transforms"],
        preprocessing_captioning_strategy=params["preprocessing_captioning_strategy"],
        preprocessing_captioning_prompt=params["preprocessing_captioning_prompt"],
        priority=params["priority"],
        webhook_url=params["webhook_url"],
        source_images=source_images,
        total_files_count=len(source_images),
        training_options={name: params[name] for name in ENGINE_OPTIONS},
        **{k: v for k, v in (origin or {}).items() if k in ORIGIN_FIELDS and v is not None},
    )
    try:
        with transaction.atomic():
            task.save(force_insert=True)
    except IntegrityError as exc:
        # Another start of the same model won the race: the partial unique index refused this one.
        raise Conflict("Model is already training") from exc
    credits_reserve(team=model.team, task=task, estimate=plan.estimate)
    Model.objects.filter(pk=model.pk).update(status=Model.Status.QUEUED, updated_at=timezone.now())
    webhook_emit(task_id=task.pk, event="queued")
    transaction.on_commit(lambda: training_task_enqueue(task_id=str(task.id)))
    return task


EVENT_FOR_STATUS: dict[str, str] = {
    TrainingTask.Status.PENDING: "queued",
    TrainingTask.Status.PREPROCESSING: "started",
    TrainingTask.Status.COMPLETED: "completed",
    TrainingTask.Status.FAILED: "failed",
    TrainingTask.Status.CANCELLED: "cancelled",
}
ORIGIN_FIELDS = ("origin_instance", "origin_zone", "origin_version", "origin_tenant_id")


def _default_trigger_word(model: Model) -> str:
    # A rare token that the base model's vocabulary has no meaning for, derived from the model id.
    return "sks" + model.public_id.split("_", 1)[1][:4].lower()


START_MESSAGE = "training.tasks.run_next_training"


def training_task_enqueue(*, task_id: str | None = None) -> str:
    """Put a "run the next training" message on django-q2's queue.

    The message names no task: the worker that takes it claims the best pending task at that moment
    (highest priority, then oldest), so priority decides the order with any broker, and a message
    that finds nothing to claim is harmless.
    """
    queue_id = queue_send(START_MESSAGE, queue=settings.TRAINING_QUEUE, task_name="training", group="training")
    if task_id is not None:
        TrainingTask.objects.filter(pk=task_id).update(celery_training_task_id=queue_id)
    return queue_id


def training_cancel(*, model: Model) -> TrainingTask:
    """Cancel the model's queued or running training."""
    task = model.training_tasks.filter(status__in=TrainingTask.ACTIVE_STATUSES).order_by("-created_at").first()
    if task is None:
        raise Conflict(f"model {model.public_id} has no training to cancel")
    return training_task_cancel(task=task)


@transaction.atomic
def training_task_cancel(*, task: TrainingTask) -> TrainingTask:
    """A queued task is cancelled at once; a running one is flagged and stops at its runner's next step.

    The flag is durable: no claim clears it, and a task whose worker is lost or hands it back with the
    flag set ends CANCELLED (unrun steps refunded) instead of going back to the queue.
    """
    _lock_task_rows(task.pk)
    task = TrainingTask.objects.select_for_update().get(pk=task.pk)
    if task.status not in TrainingTask.ACTIVE_STATUSES:
        raise Conflict(f"training task {task.pk} is {task.status} and cannot be cancelled")
    now = timezone.now()
    if task.status == TrainingTask.Status.PENDING and _transition(
        task.pk,
        TrainingTask.Status.CANCELLED,
        expected=(TrainingTask.Status.PENDING,),
        fields={"completed_at": now, "cancel_requested_at": now},
    ):
        task.refresh_from_db()
        return task
    TrainingTask.objects.filter(pk=task.pk, cancel_requested_at__isnull=True).update(cancel_requested_at=now)
    task.refresh_from_db()
    return task


def _lock_task_rows(task_id: Any) -> bool:
    """Lock, for the rest of the transaction, the rows a change of this task writes besides its own.

    LOCK ORDER. Every transaction that writes more than one of a model's, its team's and a task's rows
    takes their locks in this order: the Model row, then the Team row, then the TrainingTask row (then
    rows that belong to them: credit entries, webhook deliveries, checkpoints). Starting a training
    (model, team, new task), cancelling one, and every worker transition (claim, requeue, complete,
    fail) follow it, so two of them wait for each other instead of deadlocking. A task's model and team
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


def _transition(
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
        if not _lock_task_rows(task_id):
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


def training_task_claim(*, task_id: str, worker_id: str) -> TrainingTask | None:
    """Take this pending task for this worker, or None if another worker (or a cancel) got there first.

    A pending task never carries a cancel request (a cancel of a queued task ends it at once, and a
    requeue honours one), but should one be found it is finalised CANCELLED here, never run."""
    if not _transition(
        task_id,
        TrainingTask.Status.PREPROCESSING,
        expected=(TrainingTask.Status.PENDING,),
        fields=_claim_fields(worker_id),
        where={"cancel_requested_at__isnull": True},
    ):
        _transition(
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


@transaction.atomic
def training_task_set_priority(*, task: TrainingTask, priority: int) -> TrainingTask:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 3:
        raise InvalidInput("priority must be 0 (low), 1 (normal), 2 (high) or 3 (urgent)", field="priority")
    task = TrainingTask.objects.select_for_update().get(pk=task.pk)
    if task.status != TrainingTask.Status.PENDING:
        raise Conflict(f"training task {task.pk} is {task.status}; only a queued task's priority can change")
    if task.priority != priority:
        task.priority = priority
        task.priority_changed_at = timezone.now()
        task.save(update_fields=["priority", "priority_changed_at", "updated_at"])
    return task


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
    if not _transition(
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
    task = TrainingTask.objects.get(pk=task_id)
    with open(weights_path, "rb") as handle:
        task.weights.save(Path(weights_path).name, File(handle), save=False)
    stored = [task.weights.name]
    if kohya_path is not None:
        with open(kohya_path, "rb") as handle:
            task.weights_kohya.save(Path(kohya_path).name, File(handle), save=False)
        stored.append(task.weights_kohya.name)
        fields = {**fields, "weights_kohya": task.weights_kohya.name}
    stored_name = task.weights.name
    now = timezone.now()
    with transaction.atomic():
        moved = _transition(
            task_id,
            TrainingTask.Status.COMPLETED,
            expected=(TrainingTask.Status.TRAINING,),
            worker_id=worker_id,
            fields={
                **fields,
                "weights": stored_name,
                "completed_at": now,
                "progress": 100.0,
                "eta_seconds": 0,
                "lease_expires_at": None,
                "failure_reason": "",  # an earlier attempt's (worker_lost, say) no longer describes the task
            },
        )
        if moved:
            Model.objects.filter(uuid=task.model_id).update(trained_task=task_id)
    if not moved:
        for name in filter(None, stored):
            task.weights.storage.delete(name)
    return moved


def training_task_add_sample(*, task_id: Any, step: int, prompt: str, path: Path) -> TrainingSample:
    """Store a sample image the running training made, under the task's folder."""
    index = int(Path(path).stem.rsplit("-", 1)[-1]) if "-" in Path(path).stem else 0
    sample = TrainingSample(task_id=task_id, step=step, prompt=prompt, index=index)
    with open(path, "rb") as handle:
        sample.file.save(Path(path).name, File(handle), save=False)
    TrainingSample.objects.filter(task_id=task_id, step=step, index=index).delete()  # a resumed run re-samples
    sample.save()
    return sample


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
    moved = _transition(
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
        moved = _transition(
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
    return _transition(
        task_id,
        TrainingTask.Status.CANCELLED,
        expected=TrainingTask.RUNNING_STATUSES,
        worker_id=worker_id,
        where={"cancel_requested_at__isnull": False},
        fields={**fields, "logs": log_tail(logs, [stamped]), "completed_at": timezone.now(), "lease_expires_at": None},
    )


def training_task_cancelled(*, task_id: Any, worker_id: str, fields: dict[str, Any] | None = None) -> bool:
    """The runner stopped a running task because its cancel was requested."""
    return _transition(
        task_id,
        TrainingTask.Status.CANCELLED,
        expected=TrainingTask.RUNNING_STATUSES,
        worker_id=worker_id,
        fields={**(fields or {}), "completed_at": timezone.now(), "lease_expires_at": None},
    )


def log_tail(existing: str, lines: list[str]) -> str:
    """The task log with new lines appended, cut from the front to a bounded size."""
    text = existing + "".join(f"{line}\n" for line in lines)
    if len(text) > LOG_TAIL_CHARS:
        text = text[-LOG_TAIL_CHARS:]
        text = text[text.find("\n") + 1 :]
    return text


def training_checkpoint_record(
    *, task_id: Any, step: int, folder: Path, keep: int, snapshot: bool = False
) -> TrainingCheckpoint:
    """Mirror a checkpoint folder to storage, and keep only the newest `keep` there too.

    A `snapshot` is the worker's own crash-safety save: only the newest one per task is kept, and it
    neither counts against the user's `keep` nor is listed as one of their checkpoints.
    """
    from django.core.files.storage import default_storage

    checkpoint = TrainingCheckpoint(task_id=task_id, step=step, snapshot=snapshot)
    files = {}
    for path in sorted(Path(folder).iterdir()):
        with open(path, "rb") as handle:
            files[path.name] = default_storage.save(checkpoint_upload_to(checkpoint, path.name), File(handle))
    checkpoint.files = files
    with transaction.atomic():
        replaced = list(TrainingCheckpoint.objects.filter(task_id=task_id, step=step, snapshot=snapshot))
        for old in replaced:  # a resumed run saves the same step again
            old.delete()
        checkpoint.save()
    same_kind = TrainingCheckpoint.objects.filter(task_id=task_id, snapshot=snapshot)
    # One snapshot per task, the one just made; the user's newest `keep` checkpoints.
    stale = list(same_kind.exclude(pk=checkpoint.pk) if snapshot else same_kind.order_by("-step")[keep:])
    for old in [*replaced, *stale]:
        for name in old.files.values():
            if name not in files.values():
                default_storage.delete(name)
        if old.pk is not None:
            old.delete()
    return checkpoint
