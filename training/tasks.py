"""django-q2 entry points. They take ids and call the runner or a service; nothing else happens here."""

from __future__ import annotations

from typing import TypedDict

from training.generation import run_generation_job
from training.runner import run_next_training as run_next
from training.runner import run_training_task


def run_next_training() -> str:
    return run_next()


def run_training(task_id: str) -> str:
    return run_training_task(task_id)


def run_generation(job_id: str) -> str:
    return run_generation_job(job_id)


def caption_images(model_id: int) -> str:
    from training.autocaption import caption_model_images

    return caption_model_images(model_id)


def deliver_webhook(delivery_id: int) -> str:
    from training.webhooks import deliver_and_schedule

    return deliver_and_schedule(delivery_id)


class StaleTasksReport(TypedDict):
    requeued: list[str]
    failed: list[str]
    cancelled: list[str]
    enqueued: int
    generation_requeued: list[str]
    generation_failed: list[str]
    generation_cancelled: list[str]
    webhooks: int


def reap_stale_tasks() -> StaleTasksReport:
    """The reaper, every minute on the housekeeping cluster (and `manage.py reap_stale_tasks`)."""
    from models_app.services.generation import generation_jobs_reap
    from models_app.services.webhooks import webhook_due_deliveries, webhook_send
    from models_app.services.worker_protocol import training_tasks_reap

    report = training_tasks_reap()
    jobs = generation_jobs_reap()
    # Deliveries whose queued attempt or retry was lost: queued again (each attempt is its own task, so
    # a receiver that hangs never holds the reaper up).
    overdue = webhook_due_deliveries()
    for delivery_id in overdue:
        webhook_send(delivery_id=delivery_id)
    return {
        "requeued": report.requeued,
        "failed": report.failed,
        "cancelled": report.cancelled,
        "enqueued": report.enqueued,
        "generation_requeued": jobs.requeued,
        "generation_failed": jobs.failed,
        "generation_cancelled": jobs.cancelled,
        "webhooks": len(overdue),
    }
