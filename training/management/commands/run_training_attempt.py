"""`manage.py run_training_attempt TASK --worker-id W`: run an attempt that worker W has claimed, here.

The entrypoint of a Ray job (training/ray_jobs.py): the same runner as a local worker, under the id of
the worker that claimed the task and follows the job. A task that is no longer W's is left alone.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.models import TrainingTask
from training.runner import run_attempt


class Command(BaseCommand):
    help = "Runs a claimed training attempt in this process (a Ray job's entrypoint)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_id")
        parser.add_argument("--worker-id", required=True, help="the worker that claimed the attempt")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            uuid.UUID(options["task_id"])
        except ValueError as exc:
            raise CommandError(f"{options['task_id']!r} is not a training task id (a UUID)") from exc
        task = (
            TrainingTask.objects.filter(
                pk=options["task_id"], worker_id=options["worker_id"], status__in=TrainingTask.RUNNING_STATUSES
            )
            .select_related("model", "team")
            .first()
        )
        if task is None:
            raise CommandError(f"training task {options['task_id']} is not running under {options['worker_id']}")
        outcome = run_attempt(task, options["worker_id"])
        self.stdout.write(f"training task {task.pk}: {outcome}")
