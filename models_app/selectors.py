"""Every read the callers need, scoped to the caller's team. Another team's id is simply not found."""

from __future__ import annotations

import uuid

from django.db.models import Count, Prefetch, QuerySet

from models_app.errors import InvalidInput, NotFound
from models_app.input_rules import public_id_plausible
from models_app.input_rules import shown_id as _shown
from models_app.models import (
    Asset,
    CreditEntry,
    GenerationJob,
    Model,
    Pair,
    Project,
    Team,
    TrainingImage,
    TrainingTask,
)


def model_list(
    *,
    team: Team,
    status: str | None = None,
    type: str | None = None,  # noqa: A002 - the API's filter name
    project_id: str | None = None,
    include_deleted: bool = False,
) -> QuerySet[Model]:
    models = Model.objects.filter(team=team)
    if not include_deleted:
        models = models.exclude(status=Model.Status.DELETED)
    if status:
        models = models.filter(status=status)
    if type:
        models = models.filter(type=type)
    if project_id:
        models = models.filter(project__public_id=project_id) if public_id_plausible(project_id) else models.none()
    return (
        models.select_related("project", "trained_task", "team")
        .annotate(training_images_count=Count("training_images", distinct=True))
        .prefetch_related(
            Prefetch(
                "training_tasks",
                queryset=TrainingTask.objects.order_by("-created_at")[:1],
                to_attr="latest_tasks",
            )
        )
    )


def model_get(*, team: Team, public_id: str, include_deleted: bool = False) -> Model:
    if not public_id_plausible(public_id):
        raise NotFound(f"model {_shown(public_id)} not found")
    model = model_list(team=team, include_deleted=include_deleted).filter(public_id=public_id).first()
    if model is None:
        raise NotFound(f"model {public_id} not found")
    return model


def model_latest_task(model: Model) -> TrainingTask | None:
    prefetched = getattr(model, "latest_tasks", None)
    if prefetched is not None:
        return prefetched[0] if prefetched else None
    return model.training_tasks.order_by("-created_at").first()


def project_get(*, team: Team, public_id: str, field: str = "project_id") -> Project:
    if not public_id_plausible(public_id):
        raise NotFound(f"project {_shown(public_id)} not found", field=field)
    project = Project.objects.filter(team=team, public_id=public_id).first()
    if project is None:
        raise NotFound(f"project {public_id} not found", field=field)
    return project


def training_image_list(*, model: Model) -> QuerySet[TrainingImage]:
    return model.training_images.select_related("asset").order_by("created_at", "id")


def training_image_get(*, model: Model, public_id: str) -> TrainingImage:
    if not public_id_plausible(public_id):
        raise NotFound(f"training image {_shown(public_id)} not found in model {model.public_id}")
    image = training_image_list(model=model).filter(asset__public_id=public_id).select_related("model").first()
    if image is None:
        raise NotFound(f"training image {public_id} not found in model {model.public_id}")
    return image


def pair_list(*, model: Model) -> QuerySet[Pair]:
    return model.pairs.select_related("source__asset", "target__asset")


def training_task_list(*, team: Team) -> QuerySet[TrainingTask]:
    return TrainingTask.objects.filter(team=team).order_by("-created_at", "-pk")


def training_task_get(*, team: Team, task_id: str) -> TrainingTask:
    try:
        key = uuid.UUID(str(task_id))
    except ValueError as exc:
        raise NotFound(f"training task {_shown(task_id)} not found") from exc
    task = TrainingTask.objects.filter(team=team, pk=key).select_related("model").first()
    if task is None:
        raise NotFound(f"training task {task_id} not found")
    return task


def training_task_reserved_credits(task: TrainingTask) -> str | None:
    entry = CreditEntry.objects.filter(task=task, kind=CreditEntry.Kind.RESERVE).first()
    return str(-entry.amount) if entry else None


def model_get_by_uuid(*, team: Team, value: str, field: str = "entity_id") -> Model:
    try:
        key = uuid.UUID(str(value))
    except ValueError as exc:
        raise InvalidInput(f"{field} must be a UUID; got {_shown(value)}", field=field) from exc
    model = Model.objects.filter(team=team, uuid=key).exclude(status=Model.Status.DELETED).first()
    if model is None:
        raise NotFound(f"model {value} not found", field=field)
    return model


def asset_get(*, team: Team, public_id: str) -> Asset:
    if not public_id_plausible(public_id):
        raise NotFound(f"asset {_shown(public_id)} not found")
    asset = Asset.objects.filter(team=team, public_id=public_id).first()
    if asset is None:
        raise NotFound(f"asset {public_id} not found")
    return asset


def generation_job_get(*, team: Team, public_id: str) -> GenerationJob:
    if not public_id_plausible(public_id):
        raise NotFound(f"job {_shown(public_id)} not found")
    job = (
        GenerationJob.objects.filter(team=team, public_id=public_id)
        .select_related("model")
        .prefetch_related("images")
        .first()
    )
    if job is None:
        raise NotFound(f"job {public_id} not found")
    return job


MEASURED_RUNS = 5  # the rate is the median of this many recent trainings of the same base model


def training_measured_seconds_per_unit(*, base_model: str, native_resolution: int) -> tuple[float, int, str] | None:
    """What the workers really took for this base model: seconds per training sample at the family's
    native resolution (the median over the last MEASURED_RUNS completed trainings), how many runs that
    is, and the worker labels that ran them. None until one has completed."""
    import statistics

    rates: list[float] = []
    workers: set[str] = set()
    recent = (
        TrainingTask.objects.filter(status=TrainingTask.Status.COMPLETED, base_model_path=base_model)
        .order_by("-completed_at")
        .values_list("stage_seconds", "steps", "batch_size", "gradient_accumulation", "resolution", "worker_id")
    )
    for stage_seconds, steps, batch_size, accumulation, resolution, worker_id in recent[: MEASURED_RUNS * 2]:
        seconds = (stage_seconds or {}).get("training")
        if not seconds or not steps:
            continue
        size = resolution or native_resolution
        units = steps * (batch_size or 1) * (accumulation or 1) * (size * size) / (native_resolution**2)
        rates.append(float(seconds) / units)
        workers.add(":".join(worker_id.split(":")[:2]) or "unknown")  # host:label, without pid and nonce
        if len(rates) == MEASURED_RUNS:
            break
    if not rates:
        return None
    return statistics.median(rates), len(rates), ", ".join(sorted(workers))


def credit_entries_recent(*, team: Team, limit: int = 20) -> list[CreditEntry]:
    """The team's newest ledger entries, newest first."""
    return list(CreditEntry.objects.filter(team=team).select_related("task").order_by("-created_at", "-pk")[:limit])
