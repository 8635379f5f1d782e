"""Re-queue (or fail) trainings and generation jobs whose worker is gone, and send webhook deliveries that are due."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from training.tasks import reap_stale_tasks


class Command(BaseCommand):
    help = (
        "Re-queue trainings and generation jobs whose worker stopped renewing its lease (fail them after their "
        "attempts run out; cancel those with a cancel request), add lost start messages and re-send overdue "
        "webhook deliveries."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = reap_stale_tasks()
        self.stdout.write(
            f"re-queued {len(report['requeued'])}, failed {len(report['failed'])}, "
            f"cancelled {len(report['cancelled'])}, "
            f"start messages added {report['enqueued']}, webhook deliveries re-sent {report['webhooks']}"
        )
        for task_id in report["requeued"]:
            self.stdout.write(f"  re-queued {task_id}")
        for task_id in report["failed"]:
            self.stdout.write(f"  failed {task_id}")
        for task_id in report["cancelled"]:
            self.stdout.write(f"  cancelled {task_id} (its cancel request outlived its worker)")
        for outcome, job_ids in (
            ("re-queued", report["generation_requeued"]),
            ("failed", report["generation_failed"]),
            ("cancelled", report["generation_cancelled"]),
        ):
            for job_id in job_ids:
                self.stdout.write(f"  generation job {job_id} {outcome}")
