"""The admin's index: a training dashboard above Django's app list. What runs now (step, loss, ETA, kept
live by polling `dashboard/live/`), the queue in the order the workers will claim it, the recent failures
with their reason, and the workers (on GPUs or CPUs) with what each holds and the state of its lease.

A superuser sees every team's trainings, a staff member their own teams' (admin_console.staff_teams).
The reads are one selector (selectors.training_dashboard); this module only shapes its rows for the
page (templates/admin/dashboard.html) and its JSON, so that both say the same thing in the same words.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse

from models_app.admin_console import staff_teams
from models_app.models import TrainingTask
from models_app.selectors import DashboardWorker, TrainingDashboard, training_dashboard

POLL_SECONDS = 3
_PRIORITY_LABELS = dict(TrainingTask.Priority.choices)
_FAILURE_LABELS = dict(TrainingTask._meta.get_field("failure_reason").flatchoices)


def duration_text(seconds: int) -> str:
    """A span of time as a person reads it: 45 s, 12 min, 1 h 5 min."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def eta_text(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    return "under a minute" if seconds < 60 else duration_text(seconds)


def lease_text(worker: DashboardWorker) -> str:
    left = worker.lease_seconds_left
    if left is None:
        return "no lease: the reaper re-queues the task"
    if left < 0:
        return f"{duration_text(-left)} ago: the worker stopped answering; the reaper re-queues the task"
    return f"held, expires in {duration_text(left)} unless renewed"


def _team(task: TrainingTask) -> dict[str, str]:
    return {"team": task.team.name, "team_id": task.team.public_id}


def _task(task: TrainingTask) -> dict[str, Any]:
    return {
        "id": str(task.pk),
        "short_id": str(task.pk)[:8],
        "url": reverse("admin:models_app_trainingtask_change", args=[task.pk]),
        "model": task.model.name,
        "model_id": task.model.public_id,
        **_team(task),
    }


def _worker(worker: DashboardWorker) -> dict[str, Any]:
    return {
        "worker_id": worker.worker_id,
        "name": " · ".join(part for part in (worker.host, worker.label) if part),
        "pid": worker.pid,
        "devices": worker.devices,
        "task": str(worker.task.pk),
        "lease": lease_text(worker),
        "lease_expired": worker.lease_expired,
    }


def running_row(task: TrainingTask, worker: DashboardWorker) -> dict[str, Any]:
    preprocessing = task.status == TrainingTask.Status.PREPROCESSING
    return {
        **_task(task),
        "status": task.status,
        "stage": (task.preprocessing_stage or "preprocessing") if preprocessing else "",  # the badge says TRAINING
        "percent": round(task.progress),
        "current_step": task.current_step,
        "total_steps": task.total_steps,
        "loss": "—" if task.loss is None else f"{task.loss:.4f}",
        "eta": eta_text(task.eta_seconds),
        "cancel_requested": task.cancel_requested_at is not None,
        "worker": _worker(worker),
    }


def queue_row(task: TrainingTask) -> dict[str, Any]:
    retry = ""
    if task.attempt_count and task.failure_reason:  # re-queued after a failed attempt (training_task_fail)
        reason = _FAILURE_LABELS.get(task.failure_reason, task.failure_reason)
        retry = f"retry: attempt {task.attempt_count} of {task.max_attempts} ended ({reason})"
    return {
        **_task(task),
        "position": task.position,  # type: ignore[attr-defined]
        "priority": _PRIORITY_LABELS.get(task.priority, str(task.priority)),
        "priority_value": task.priority,
        "created_at": task.created_at,
        "retry": retry,
    }


def failure_row(task: TrainingTask) -> dict[str, Any]:
    return {
        **_task(task),
        "reason": _FAILURE_LABELS.get(task.failure_reason, task.failure_reason) or "Failed",
        "failure_reason": task.failure_reason,
        "error": task.error_message or "(no message)",
        "completed_at": task.completed_at,
        "attempts": f"{task.attempt_count} of {task.max_attempts}",
    }


def dashboard_signature(board: TrainingDashboard) -> str:
    """Changes when a row comes or goes (a task starts, ends, moves in the queue, changes worker): the
    page then reloads; between changes only the running rows' numbers are refreshed in place."""
    parts = [
        *(f"r{task.pk}:{task.status}:{task.worker_id}" for task in board.running),
        *(f"q{task.pk}:{task.position}:{task.priority}" for task in board.queue),  # type: ignore[attr-defined]
        *(f"f{task.pk}" for task in board.failures),
        f"n{board.queued_total}:{board.failed_recently}",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def dashboard_read(request: HttpRequest) -> TrainingDashboard | None:
    """The dashboard for this user: every team's for a superuser, their teams' otherwise; None for a staff
    account whose roles grant no view of trainings."""
    if not request.user.has_perm("models_app.view_trainingtask"):
        return None
    return training_dashboard(teams=None if request.user.is_superuser else staff_teams(request))


def dashboard_rows(board: TrainingDashboard) -> dict[str, Any]:
    workers = {worker.task.pk: worker for worker in board.workers}
    return {
        "running": [running_row(task, workers[task.pk]) for task in board.running],
        "queue": [queue_row(task) for task in board.queue],
        "queued_total": board.queued_total,
        "failures": [failure_row(task) for task in board.failures],
        "failed_recently": board.failed_recently,
        "workers": [{**_worker(worker), "held": _task(worker.task)} for worker in board.workers],
        "signature": dashboard_signature(board),
    }


# What the page's script updates in place; the rest of a row only changes with the signature.
_LIVE_RUNNING_KEYS = (
    "id",
    "status",
    "stage",
    "percent",
    "current_step",
    "total_steps",
    "loss",
    "eta",
    "cancel_requested",
)
_LIVE_WORKER_KEYS = ("worker_id", "name", "task", "lease", "lease_expired")


def dashboard_live(request: HttpRequest) -> JsonResponse:
    """What the dashboard refreshes every few seconds: the running rows and the workers' leases, and the
    signature that tells the page to reload when the rows themselves changed."""
    board = dashboard_read(request)
    if board is None:
        raise PermissionDenied("your role in the team does not allow this (view_trainingtask)")
    rows = dashboard_rows(board)
    return JsonResponse(
        {
            "signature": rows["signature"],
            "running": [{key: row[key] for key in _LIVE_RUNNING_KEYS} for row in rows["running"]],
            "workers": [{key: worker[key] for key in _LIVE_WORKER_KEYS} for worker in rows["workers"]],
            "queued_total": rows["queued_total"],
            "failed_recently": rows["failed_recently"],
        }
    )


class ConsoleAdminSite(admin.AdminSite):
    """Django's admin site, its index the training dashboard (made the default by ConsoleAdminConfig)."""

    index_template = "admin/dashboard.html"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        board = dashboard_read(request)
        context = {
            "board": dashboard_rows(board) if board is not None else None,
            "board_all_teams": request.user.is_superuser,
            "board_poll_seconds": POLL_SECONDS,
            **(extra_context or {}),
        }
        return super().index(request, context)

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [path("dashboard/live/", self.admin_view(dashboard_live), name="dashboard_live"), *super().get_urls()]
