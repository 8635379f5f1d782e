"""Every read the callers need, scoped to the caller's team. Another team's id is simply not found."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from django.db.models import Count, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Window
from django.db.models.functions import Coalesce
from django.utils import timezone

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
    WorkerMachine,
)

# What a model shows of its latest training task (`trainingProgress`). A task row also holds its logs, up
# to 500 loss points (about 15 KB of JSON) and other bookkeeping that trainingProgress does not show.
MODEL_PROGRESS_TASK_FIELDS = (
    "id",
    "status",
    "preprocessing_stage",
    "progress",
    "current_step",
    "total_steps",
    "eta_seconds",
    "loss",
    "error_message",
    "gpus",
    "machine",
    "devices",
)


class TaskProgress(NamedTuple):
    """What a model shows of its newest training (`trainingProgress`), read with the model's own row."""

    pk: uuid.UUID
    status: str
    preprocessing_stage: str | None
    progress: float
    current_step: int
    total_steps: int
    eta_seconds: int | None
    loss: float | None
    error_message: str | None
    gpus: int
    machine: str
    devices: list[int]


# The newest task's fields as columns of the model's row (`latest_task_status`, ...).
_PROGRESS_COLUMNS = {f"latest_task_{name}": F(f"latest_task__{name}") for name in TaskProgress._fields if name != "pk"}
# A correlated count rather than a join grouped by every column: the row query needs no GROUP BY, and a
# page's count query leaves the annotation out. Built once: Django copies an expression where it is used.
_TRAINING_IMAGES_COUNT = Coalesce(
    Subquery(
        TrainingImage.objects.filter(model=OuterRef("pk"))
        .order_by()
        .values("model")
        .annotate(n=Count("pk"))
        .values("n")
    ),
    0,
    output_field=IntegerField(),
)


def team_list_for_user(*, user_id: int) -> QuerySet[Team]:
    """The teams a user is a member of (any role)."""
    return Team.objects.filter(memberships__user_id=user_id)


def team_list_for_staff(*, user_id: int | None, superuser: bool) -> QuerySet[Team]:
    """The teams a staff member works on in the admin: every team for a superuser, else their own; none
    for no one signed in."""
    if user_id is None:
        return Team.objects.none()
    return Team.objects.all() if superuser else team_list_for_user(user_id=user_id)


def model_in_teams(*, teams: QuerySet[Team], pk: int) -> Model:
    """One of these teams' models by primary key (the admin's URLs), with its team; 404 otherwise."""
    model = Model.objects.filter(team__in=teams, pk=pk).select_related("team").first()
    if model is None:
        raise NotFound(f"model {pk} not found")
    return model


def training_task_in_teams(*, teams: QuerySet[Team], pk: str) -> TrainingTask:
    """One of these teams' training tasks by id, with its model; 404 otherwise."""
    try:
        key = uuid.UUID(str(pk))
    except ValueError as exc:
        raise NotFound(f"training task {_shown(str(pk))} not found") from exc
    task = TrainingTask.objects.filter(team__in=teams, pk=key).select_related("model").first()
    if task is None:
        raise NotFound(f"training task {pk} not found")
    return task


def training_image_of_model(*, model: Model, pk: int) -> TrainingImage:
    """One of the model's training images by primary key, with its asset; 404 otherwise."""
    image = model.training_images.select_related("asset__team").filter(pk=pk).first()
    if image is None:
        raise NotFound(f"training image {pk} not found in model {model.public_id}")
    return image


def _shown_columns(models: QuerySet[Model], *, include_deleted: bool) -> QuerySet[Model]:
    """Models with all that ModelSerializer shows, in one query. What it shows of the project, the trained
    task's weights and the newest task (a TaskProgress, see model_progress) comes as columns of the row:
    joined instances of those models cost more to build than the row's own."""
    if not include_deleted:
        models = models.exclude(status=Model.Status.DELETED)
    return models.annotate(
        training_images_count=_TRAINING_IMAGES_COUNT,
        project_public_id=F("project__public_id"),
        trained_weights=F("trained_task__weights"),
        **_PROGRESS_COLUMNS,
    )


def _filtered(
    models: QuerySet[Model],
    *,
    status: str | None,
    type: str | None,  # noqa: A002 - the API's filter name
    project_id: str | None,
) -> QuerySet[Model]:
    if status:
        models = models.filter(status=status)
    if type:
        models = models.filter(type=type)
    if project_id:
        models = models.filter(project__public_id=project_id)
    return models


def model_progress(model: Model) -> TaskProgress | None:
    """The model's newest training as `trainingProgress` shows it; None if it never trained. Read with the
    model by model_list, model_page and model_get, else now."""
    if model.latest_task_id is None:
        return None
    if not hasattr(model, "latest_task_status"):
        values = TrainingTask.objects.filter(pk=model.latest_task_id).values_list(*TaskProgress._fields).get()
        return TaskProgress(*values)
    columns = {
        name: getattr(model, column) for name, column in zip(TaskProgress._fields[1:], _PROGRESS_COLUMNS, strict=True)
    }
    if isinstance(columns["devices"], str):  # a JSON column read through a join comes back as its text on SQLite
        columns["devices"] = json.loads(columns["devices"])
    return TaskProgress(model.latest_task_id, **columns)


# The order of the API's model list: newest first.
MODEL_LIST_ORDER = ("-created_at", "-id")


def model_list(
    *,
    team: Team,
    status: str | None = None,
    type: str | None = None,  # noqa: A002 - the API's filter name
    project_id: str | None = None,
    include_deleted: bool = False,
) -> QuerySet[Model]:
    """The team's models, ready for ModelSerializer: the same query for a page of any size. Read through
    the team's own manager, every row's `team` is the `team` given (no join, no copy)."""
    if project_id and not public_id_plausible(project_id):
        return team.models.none()
    models = _shown_columns(team.models.all(), include_deleted=include_deleted)
    return _filtered(models, status=status, type=type, project_id=project_id)


class PreparedRead:
    """A read whose SQL the ORM builds and compiles once per process, run after that with new values.

    Django builds and compiles a queryset's SQL anew on every execution. For the API's two hottest reads
    (a page of models, a model by id) that was most of the request's own CPU: about 1.3 ms of a detail's
    4 under gunicorn, where reading the row took 0.3. No maintained library caches compiled SQL (the
    query caches, such as django-cachalot, keep results, which every progress write would invalidate).
    Here the queryset is built with a placeholder for each value a read varies (each must appear exactly
    once among the compiled parameters, checked here) and a read runs the same SQL with its own values
    through `Model.objects.raw`, which maps the columns to fields, converted as the ORM converts them, and
    the rest to attributes as annotations are. The annotations these reads carry are integers, floats
    and text, which need no conversion on either database. Tests compare both paths' rows."""

    def __init__(self, queryset: QuerySet[Model], *, paged: bool = False, **placeholders: object) -> None:
        sql, params = queryset.query.sql_with_params()
        self.sql = f"{sql} LIMIT %s OFFSET %s" if paged else sql
        self.params = list(params)
        self.slots: dict[str, int] = {}
        for name, value in placeholders.items():
            found = [at for at, param in enumerate(self.params) if type(param) is type(value) and param == value]
            if len(found) != 1:
                raise ValueError(f"placeholder {name}={value!r} is {len(found)} of the compiled parameters, not 1")
            self.slots[name] = found[0]

    def rows(self, *, limit: int | None = None, offset: int = 0, **values: object) -> list[Model]:
        params = list(self.params)
        for name, value in values.items():
            params[self.slots[name]] = value
        if limit is not None:
            params += [limit, offset]
        return list(Model.objects.raw(self.sql, params))


# Stand-ins for the values a prepared read varies: no row has a negative id, and no filter value can
# hold a NUL character (the API refuses control characters).
_TEAM_PLACEHOLDER = -4_242_424_242
_FILTER_NAMES = ("status", "type", "project_id")


@functools.cache
def _model_page_read(include_deleted: bool, filters: tuple[str, ...]) -> PreparedRead:
    placeholders = {name: f"\x00{name}" for name in filters}
    models = _shown_columns(Model.objects.filter(team_id=_TEAM_PLACEHOLDER), include_deleted=include_deleted)
    models = _filtered(models, **{name: placeholders.get(name) for name in _FILTER_NAMES})
    models = models.order_by(*MODEL_LIST_ORDER).annotate(page_total_rows=Window(Count("*")))
    return PreparedRead(models, paged=True, team=_TEAM_PLACEHOLDER, **placeholders)


def model_page(
    *,
    team: Team,
    offset: int,
    limit: int,
    status: str | None = None,
    type: str | None = None,  # noqa: A002 - the API's filter name
    project_id: str | None = None,
    include_deleted: bool = False,
) -> tuple[list[Model], int]:
    """Rows `offset` to `offset + limit` of model_list in MODEL_LIST_ORDER and the number of rows in all,
    in one query (a prepared read). The total is 0 when the page reads no rows."""
    if project_id and not public_id_plausible(project_id):
        return [], 0
    given = {name: value for name, value in (("status", status), ("type", type), ("project_id", project_id)) if value}
    read = _model_page_read(include_deleted, tuple(given))
    rows = read.rows(team=team.pk, limit=limit, offset=offset, **given)
    for row in rows:
        row.team = team
    return rows, (vars(rows[0])["page_total_rows"] if rows else 0)


@functools.cache
def _model_by_id_read(include_deleted: bool) -> PreparedRead:
    placeholder = "\x00public_id"
    models = _shown_columns(Model.objects.filter(team_id=_TEAM_PLACEHOLDER), include_deleted=include_deleted)
    return PreparedRead(models.filter(public_id=placeholder), team=_TEAM_PLACEHOLDER, public_id=placeholder)


def model_get(*, team: Team, public_id: str, include_deleted: bool = False) -> Model:
    """One of the team's models, ready for ModelSerializer (a prepared read)."""
    if not public_id_plausible(public_id):
        raise NotFound(f"model {_shown(public_id)} not found")
    rows = _model_by_id_read(include_deleted).rows(team=team.pk, public_id=public_id)
    if not rows:
        raise NotFound(f"model {public_id} not found")
    rows[0].team = team
    return rows[0]


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
    return model.pairs.select_related("source__asset", "target__asset").prefetch_related("extra_sources__image__asset")


# What the worker keeps on a task besides seed 003's fields, as JSON (the loss curve alone is up to 500
# points, about 15 KB): the task resource does not show it, and decoding it for a page of 50 would cost
# about as much as the rest of the request.
TASK_BOOKKEEPING_FIELDS = ("loss_history", "validation_history", "training_options", "stage_seconds", "attempt_history")


def training_task_list(*, team: Team) -> QuerySet[TrainingTask]:
    """The team's tasks, newest first, as seed 003's list shows them (the worker's bookkeeping left out)."""
    return team.training_tasks.defer(*TASK_BOOKKEEPING_FIELDS).order_by("-created_at", "-pk")


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


DEVICE_NAMES = {"cuda": "GPU", "cpu": "CPU"}


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
        .annotate(
            device_type=Subquery(WorkerMachine.objects.filter(name=OuterRef("machine")).values("device_type")[:1])
        )
        .values_list(
            "stage_seconds", "steps", "batch_size", "gradient_accumulation", "resolution", "worker_id", "device_type"
        )
    )
    for stage_seconds, steps, batch_size, accumulation, resolution, worker_id, device_type in recent[
        : MEASURED_RUNS * 2
    ]:
        seconds = (stage_seconds or {}).get("training")
        if not seconds or not steps:
            continue
        size = resolution or native_resolution
        units = steps * (batch_size or 1) * (accumulation or 1) * (size * size) / (native_resolution**2)
        rates.append(float(seconds) / units)
        worker = ":".join(worker_id.split(":")[:2]) or "unknown"  # host:label, without pid and nonce
        # Where the figure was measured: a CPU's rate is no guide to a GPU's, and the reverse.
        workers.add(f"{worker} ({DEVICE_NAMES.get(device_type or '', 'unknown device')})")
        if len(rates) == MEASURED_RUNS:
            break
    if not rates:
        return None
    return statistics.median(rates), len(rates), ", ".join(sorted(workers))


def credit_entries_recent(*, team: Team, limit: int = 20) -> list[CreditEntry]:
    """The team's newest ledger entries, newest first."""
    return list(CreditEntry.objects.filter(team=team).select_related("task").order_by("-created_at", "-pk")[:limit])


# What the training dashboard shows of a task: no logs, no loss curve, none of the worker's JSON.
DASHBOARD_TASK_FIELDS = (
    *MODEL_PROGRESS_TASK_FIELDS,
    "model",
    "created_at",
    "team",
    "priority",
    "attempt_count",
    "max_attempts",
    "failure_reason",
    "machine",
    "devices",
    "worker_id",
    "lease_expires_at",
    "started_at",
    "completed_at",
    "cancel_requested_at",
    "model__uuid",
    "model__name",
    "model__public_id",
    "team__name",
    "team__public_id",
)
DASHBOARD_QUEUE_ROWS = 25
DASHBOARD_FAILURE_ROWS = 10
DASHBOARD_FAILURE_WINDOW = timedelta(hours=24)

_PENDING = TrainingTask.Status.PENDING
# How many pending tasks of every team a worker claims before this one (training_task_claim_next's order:
# priority, then age, then id). A correlated count: the team filter of the outer query does not touch it.
_TASKS_AHEAD = Coalesce(
    Subquery(
        TrainingTask.objects.filter(status=_PENDING)
        .filter(
            Q(priority__gt=OuterRef("priority"))
            | Q(priority=OuterRef("priority"), created_at__lt=OuterRef("created_at"))
            | Q(priority=OuterRef("priority"), created_at=OuterRef("created_at"), pk__lt=OuterRef("pk"))
        )
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
        .values("n")
    ),
    0,
    output_field=IntegerField(),
)


@dataclass(frozen=True)
class DashboardWorker:
    """A worker process seen through the task it holds: its identity is host:label:pid:random
    (training.lease.worker_identity); the label names the GPU worker (TRAINING_WORKER_NAME)."""

    worker_id: str
    host: str
    label: str
    pid: str
    task: TrainingTask
    lease_expires_at: datetime | None
    lease_seconds_left: int | None  # negative once expired; None when the task carries no lease
    device_type: str | None = None  # its machine's ("cuda" or "cpu"); None when the machine is not registered

    @property
    def devices(self) -> str:
        """What it trains on, as a person says it: "CPU", "GPU 0", "GPUs 0, 1"."""
        if self.device_type == "cpu":
            return "CPU"
        held = [str(index) for index in self.task.devices or []]
        if self.device_type == "cuda":
            return f"GPU{'s' if len(held) > 1 else ''} {', '.join(held)}".rstrip()
        return "unknown device"

    @property
    def lease_expired(self) -> bool:
        return self.lease_seconds_left is None or self.lease_seconds_left < 0


@dataclass(frozen=True)
class TrainingDashboard:
    running: Sequence[TrainingTask]
    queue: Sequence[TrainingTask]  # each with `position`: its place in the whole queue, every team's tasks counted
    queued_total: int
    failures: Sequence[TrainingTask]
    failed_recently: int  # within DASHBOARD_FAILURE_WINDOW
    workers: list[DashboardWorker]
    now: datetime


def _dashboard_tasks(teams: QuerySet[Team] | None) -> QuerySet[TrainingTask]:
    tasks = TrainingTask.objects.all() if teams is None else TrainingTask.objects.filter(team__in=teams)
    return tasks.select_related("model", "team").only(*DASHBOARD_TASK_FIELDS)


def dashboard_worker(task: TrainingTask, *, now: datetime) -> DashboardWorker:
    parts = task.worker_id.split(":")
    if len(parts) >= 4:  # the label is the part that may itself hold a colon
        host, label, pid = parts[0], ":".join(parts[1:-2]), parts[-2]
    else:
        host, label, pid = parts[0], "", ""
    left = None if task.lease_expires_at is None else int((task.lease_expires_at - now).total_seconds())
    return DashboardWorker(
        worker_id=task.worker_id,
        host=host or "unknown host",
        label=label,
        pid=pid,
        task=task,
        lease_expires_at=task.lease_expires_at,
        lease_seconds_left=left,
        device_type=getattr(task, "machine_device_type", None),
    )


def training_dashboard(
    *,
    teams: QuerySet[Team] | None,
    queue_rows: int = DASHBOARD_QUEUE_ROWS,
    failure_rows: int = DASHBOARD_FAILURE_ROWS,
) -> TrainingDashboard:
    """What the GPUs are doing for these teams (every team's when None): the running tasks, the queue
    in the order the workers will claim it, the recent failures and the workers holding the running
    tasks. Four queries, whatever the number of rows."""
    now = timezone.now()
    tasks = _dashboard_tasks(teams)
    running = list(
        tasks.filter(status__in=TrainingTask.RUNNING_STATUSES)
        .annotate(
            machine_device_type=Subquery(
                WorkerMachine.objects.filter(name=OuterRef("machine")).values("device_type")[:1]
            )
        )
        .order_by("started_at", "created_at", "pk")
    )
    queue = list(
        tasks.filter(status=_PENDING)
        .annotate(ahead=_TASKS_AHEAD)
        .order_by("-priority", "created_at", "pk")[:queue_rows]
    )
    for task in queue:
        task.position = task.ahead + 1  # type: ignore[attr-defined]
    failures = list(tasks.filter(status=TrainingTask.Status.FAILED).order_by("-completed_at", "-pk")[:failure_rows])
    counts = tasks.order_by().aggregate(
        queued=Count("pk", filter=Q(status=_PENDING)),
        failed=Count(
            "pk", filter=Q(status=TrainingTask.Status.FAILED, completed_at__gte=now - DASHBOARD_FAILURE_WINDOW)
        ),
    )
    return TrainingDashboard(
        running=running,
        queue=queue,
        queued_total=counts["queued"],
        failures=failures,
        failed_recently=counts["failed"],
        workers=sorted(
            (dashboard_worker(task, now=now) for task in running), key=lambda worker: (worker.host, worker.label)
        ),
        now=now,
    )
