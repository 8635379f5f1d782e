"""django-q2 entry points. They take ids and call the runner or a service; nothing else happens here."""

from __future__ import annotations

from training.generation import run_generation_job
from training.runner import run_next_training as run_next
from training.runner import run_training_task


def run_next_training() -> str:
    return run_next()


def run_training(task_id: str) -> str:
    return run_training_task(task_id)


def run_generation(job_id: str) -> str:
    return run_generation_job(job_id)


def reap_stale_tasks() -> dict[str, object]:
    from models_app.services.generation import generation_jobs_reap
    from models_app.services.training import training_tasks_reap
    from models_app.services.webhooks import webhook_due_deliveries
    from training.webhooks import deliver

    report = training_tasks_reap()
    jobs = generation_jobs_reap()
    # Deliveries whose process died before sending, or whose back-off has passed.
    delivered = [deliver(delivery_id) for delivery_id in webhook_due_deliveries()]
    return {
        "requeued": report.requeued,
        "failed": report.failed,
        "enqueued": report.enqueued,
        "generation_requeued": jobs.requeued,
        "generation_failed": jobs.failed,
        "generation_cancelled": jobs.cancelled,
        "webhooks": len(delivered),
    }
