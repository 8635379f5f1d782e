"""Generation jobs: queued on the training workers, claimed once, images stored as assets.

They follow the trainings' rules: a claimed job holds a lease its worker renews, the reaper re-queues
a job whose worker vanished (and fails it after MAX_ATTEMPTS), and a cancel is recorded on the row, so
it survives any crash and is visible in the job's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from models_app.errors import Conflict, InvalidInput
from models_app.input_rules import PROMPT_MAX, text_check
from models_app.models import Asset, GenerationJob, Model, Team
from models_app.services.queue import queue_send

MAX_PROMPT_CHARS = PROMPT_MAX
MAX_ATTEMPTS = 3
# Without a size, a model generates at the resolution it was trained at; it may go up to twice that
# (a tiny demo model at 64 px would take many minutes at 512 px on a CPU, and learned nothing there).
MAX_SIZE_FACTOR = 2


def generation_size_limits(model: Model) -> tuple[int, int]:
    """(default side, largest side) in pixels for generating with this model."""
    task = model.trained_task
    trained = (task.resolution if task is not None else None) or 512
    return trained, min(2048, max(64, MAX_SIZE_FACTOR * trained))


def _check_range(name: str, value: Any, low: int, high: int, *, multiple: int = 1, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer", field=name)
    if not low <= value <= high or value % multiple:
        extra = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise InvalidInput(f"{name} must be between {low} and {high}{extra}; got {value}", field=name)


@transaction.atomic
def generation_create(
    *,
    team: Team,
    model: Model,
    prompt: str,
    width: int | None = None,
    height: int | None = None,
    num_images: int = 1,
    steps: int = 25,
    seed: int = 0,
    negative_prompt: str = "",
    guidance_scale: float = 7.5,
    source_image: Asset | None = None,
) -> GenerationJob:
    if model.team_id != team.id:
        raise InvalidInput(f"model {model.public_id} not found", field="modelID")
    if model.status != Model.Status.READY or model.trained_task_id is None:
        raise Conflict(f"model {model.public_id} is {model.status}; it must be ready to generate")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("prompt is required", field="prompt")
    # The same rules whichever caller (REST, MCP, admin, a script) reached this service.
    text_check(prompt, field="prompt", max_length=MAX_PROMPT_CHARS, multiline=True)
    text_check(negative_prompt or "", field="negative_prompt", max_length=MAX_PROMPT_CHARS, multiline=True)
    default_side, largest = generation_size_limits(model)
    for name, value in (("width", width), ("height", height)):
        _check_range(name, value, 64, 2048, multiple=8, nullable=True)
        if value is not None and value > largest:
            raise InvalidInput(
                f"{name} may be at most {largest} for model {model.public_id}: twice the {default_side} px it "
                f"was trained at (leave it out to generate at {default_side} px)",
                field=name,
            )
    _check_range("numImages", num_images, 1, 4)
    _check_range("steps", steps, 1, 100)
    _check_range("seed", seed, 0, 2**31 - 1)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float) or not 0 <= guidance_scale <= 30:
        raise InvalidInput("guidance_scale must be a number between 0 and 30", field="guidance_scale")
    if model.type == Model.Type.EDIT and source_image is None:
        raise InvalidInput("an edit model generates from an input image: send its asset id as `image`", field="image")
    if source_image is not None and source_image.team_id != team.id:
        raise InvalidInput(f"asset {source_image.public_id} not found", field="image")
    width = default_side if width is None else width
    height = default_side if height is None else height
    job = GenerationJob.objects.create(
        source_image=source_image,
        team=team,
        model=model,
        prompt=prompt.strip(),
        negative_prompt=negative_prompt or "",
        width=width,
        height=height,
        num_images=num_images,
        steps=steps,
        seed=seed,
        guidance_scale=float(guidance_scale),
    )
    transaction.on_commit(lambda: generation_job_enqueue(job_id=job.public_id))
    return job


def generation_job_enqueue(*, job_id: str) -> str:
    queue_id = queue_send(
        "training.tasks.run_generation",
        job_id,
        queue=settings.TRAINING_QUEUE,
        task_name=f"generation-{job_id}",
        group="generation",
    )
    GenerationJob.objects.filter(public_id=job_id).update(queue_task_id=queue_id)
    return queue_id


def _lease() -> Any:
    return timezone.now() + timedelta(seconds=settings.TRAINING_LEASE_SECONDS)


def generation_job_claim(*, job_id: str, worker_id: str) -> GenerationJob | None:
    moved = GenerationJob.objects.filter(public_id=job_id, status=GenerationJob.Status.PENDING).update(
        status=GenerationJob.Status.RUNNING,
        worker_id=worker_id,
        attempt_count=F("attempt_count") + 1,
        started_at=timezone.now(),
        lease_expires_at=_lease(),
    )
    if not moved:
        return None
    return GenerationJob.objects.select_related(
        "model__trained_task", "model__team", "model__project", "source_image"
    ).get(public_id=job_id)


def generation_job_heartbeat(*, job_id: Any, worker_id: str) -> bool:
    """Renew the lease; False when the job is no longer this worker's."""
    return bool(
        GenerationJob.objects.filter(pk=job_id, worker_id=worker_id, status=GenerationJob.Status.RUNNING).update(
            lease_expires_at=_lease()
        )
    )


def generation_job_release(*, job_id: Any, worker_id: str) -> bool:
    """Hand a running job back to the queue (its worker is shutting down); the attempt is not counted."""
    with transaction.atomic():
        moved = GenerationJob.objects.filter(
            pk=job_id, worker_id=worker_id, status=GenerationJob.Status.RUNNING
        ).update(
            status=GenerationJob.Status.PENDING,
            worker_id="",
            lease_expires_at=None,
            attempt_count=F("attempt_count") - 1,
        )
        if moved:
            public_id = GenerationJob.objects.values_list("public_id", flat=True).get(pk=job_id)
            transaction.on_commit(lambda: generation_job_enqueue(job_id=public_id))
    return bool(moved)


@dataclass
class GenerationReapReport:
    requeued: list[str]
    failed: list[str]
    cancelled: list[str]


def generation_jobs_reap() -> GenerationReapReport:
    """Jobs whose worker stopped renewing its lease: cancelled if a cancel was asked for, else re-queued,
    or failed once MAX_ATTEMPTS were made."""
    report = GenerationReapReport(requeued=[], failed=[], cancelled=[])
    now = timezone.now()
    expired = GenerationJob.objects.filter(status=GenerationJob.Status.RUNNING, lease_expires_at__lt=now)
    for job_id, public_id, worker_id, attempts, cancel_at in expired.values_list(
        "pk", "public_id", "worker_id", "attempt_count", "cancel_requested_at"
    ):
        mine = GenerationJob.objects.filter(
            pk=job_id, status=GenerationJob.Status.RUNNING, worker_id=worker_id, lease_expires_at__lt=now
        )
        if cancel_at is not None:
            if mine.update(status=GenerationJob.Status.CANCELED, completed_at=now, lease_expires_at=None):
                report.cancelled.append(public_id)
            continue
        lost = f"the worker {worker_id or '(unknown)'} stopped answering"
        if attempts >= MAX_ATTEMPTS:
            if mine.update(
                status=GenerationJob.Status.FAILED,
                completed_at=now,
                lease_expires_at=None,
                error_message=f"{lost} (gave up after {attempts} attempts)",
            ):
                report.failed.append(public_id)
            continue
        with transaction.atomic():
            if mine.update(status=GenerationJob.Status.PENDING, worker_id="", lease_expires_at=None):
                report.requeued.append(public_id)
                transaction.on_commit(partial(generation_job_enqueue, job_id=public_id))
    return report


@transaction.atomic
def generation_job_complete(*, job: GenerationJob, worker_id: str, assets: list[Asset]) -> bool:
    """Publish the images, unless the job was cancelled meanwhile (then it ends cancelled, with none)."""
    running = GenerationJob.objects.filter(pk=job.pk, status=GenerationJob.Status.RUNNING, worker_id=worker_id)
    if running.filter(cancel_requested_at__isnull=False).update(
        status=GenerationJob.Status.CANCELED, completed_at=timezone.now(), lease_expires_at=None
    ):
        return False
    moved = running.update(status=GenerationJob.Status.COMPLETED, completed_at=timezone.now(), lease_expires_at=None)
    if moved:
        job.images.set(assets)
    return bool(moved)


def generation_job_fail(*, job: GenerationJob, worker_id: str, message: str) -> bool:
    return bool(
        GenerationJob.objects.filter(pk=job.pk, status=GenerationJob.Status.RUNNING, worker_id=worker_id).update(
            status=GenerationJob.Status.FAILED,
            completed_at=timezone.now(),
            error_message=message,
            lease_expires_at=None,
        )
    )


@transaction.atomic
def generation_cancel(*, job: GenerationJob) -> GenerationJob:
    """A pending job is cancelled at once; a running one is flagged, and its images are not published."""
    job = GenerationJob.objects.select_for_update().get(pk=job.pk)
    if job.status in GenerationJob.FINAL_STATUSES:
        raise Conflict(f"job {job.public_id} is {job.status} and cannot be cancelled")
    now = timezone.now()
    if job.status == GenerationJob.Status.PENDING:
        job.status = GenerationJob.Status.CANCELED
        job.completed_at = now
    job.cancel_requested_at = now
    job.save(update_fields=["status", "completed_at", "cancel_requested_at"])
    return job
