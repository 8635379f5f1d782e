"""Write a trained model's (or task's) LoRA to a file, in diffusers or kohya/ComfyUI layout."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.models import Model, TrainingTask


class Command(BaseCommand):
    help = "export_lora TASK_OR_MODEL --format diffusers|kohya --out FILE"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", help="a training task id (UUID) or a model id (its published weights)")
        parser.add_argument(
            "--format",
            choices=("diffusers", "kohya"),
            default="diffusers",
            help="diffusers (load_lora_weights) or kohya (ComfyUI, A1111); default: diffusers",
        )
        parser.add_argument("--out", type=Path, required=True, help="the file to write (.safetensors)")
        parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    def handle(self, *args: Any, **options: Any) -> None:
        task = self.find_task(options["source"])
        field = task.weights if options["format"] == "diffusers" else task.weights_kohya
        if not field:
            raise CommandError(f"training task {task.pk} has no {options['format']} weights (is it a LoRA, and done?)")
        out: Path = options["out"]
        if out.is_dir():
            raise CommandError(f"{out} is a folder; give a file name")
        if out.exists() and not options["force"]:
            raise CommandError(f"{out} exists; pass --force to overwrite it")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with field.open("rb") as source, open(partial, "wb") as target:
            shutil.copyfileobj(source, target, length=1024 * 1024)
        partial.replace(out)
        self.stdout.write(f"{options['format']} LoRA of task {task.pk} written to {out} ({out.stat().st_size} bytes)")

    def find_task(self, source: str) -> TrainingTask:
        try:
            key = uuid.UUID(source)
        except ValueError:
            model = Model.objects.select_related("trained_task").filter(public_id=source).first()
            if model is None:
                raise CommandError(f"no model or training task {source}") from None
            if model.trained_task is None:
                raise CommandError(f"model {source} has no trained weights yet (status {model.status})") from None
            return model.trained_task
        task = TrainingTask.objects.filter(pk=key).first()
        if task is None:
            raise CommandError(f"no model or training task {source}")
        if task.status != TrainingTask.Status.COMPLETED:
            raise CommandError(f"training task {source} is {task.status}; only a completed task has weights")
        return task
