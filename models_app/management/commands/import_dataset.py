"""Import a kohya-style folder (images, each with an optional .txt caption beside it) into a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.errors import ApplicationError
from models_app.management.cli import model_by_id, progress
from models_app.models import Model
from models_app.services.datasets import ensure_editable, training_images_add
from models_app.services.image_sources import ImageSource
from models_app.services.training import image_count_bounds

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


class Command(BaseCommand):
    help = "Add the images of a folder (with .txt captions beside them) to a model; reports what was skipped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", type=Path, help="a folder of images, each with an optional NAME.txt caption")
        parser.add_argument("--model-id", required=True, help="the model to add them to (model_…)")
        parser.add_argument("--recursive", action="store_true", help="also read the folder's subfolders")

    def handle(self, *args: Any, **options: Any) -> None:
        folder: Path = options["folder"]
        if not folder.is_dir():
            raise CommandError(f"{folder} is not a folder")
        model = model_by_id(options["model_id"])
        pattern = "**/*" if options["recursive"] else "*"
        files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() != ".txt")
        self.check_room(model, sum(1 for path in files if path.suffix.lower() in IMAGE_SUFFIXES))
        added, skipped = 0, []
        # The wrapper's own stream: tqdm redraws its bar with "\r", which OutputWrapper would end with "\n".
        # (django-stubs does not declare OutputWrapper._out.)
        stderr = cast(TextIO, self.stderr._out)
        for path in progress(files, total=len(files), description="importing", stream=stderr):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((path, "not an image file (by its extension)"))
                continue
            caption_file = path.with_suffix(".txt")
            caption = (
                caption_file.read_text(encoding="utf-8", errors="replace").strip() if caption_file.is_file() else ""
            )
            source = ImageSource(name=path.name, content=path.read_bytes(), sidecar_caption=caption)
            try:
                training_images_add(model=model, sources=[source], descriptions=[caption], field="file")
            except ApplicationError as exc:
                skipped.append((path, exc.message))
                continue
            added += 1
        self.stdout.write(f"added {added} image(s) to {model.public_id}; skipped {len(skipped)}")
        for path, reason in skipped:
            self.stdout.write(f"  skipped {path.relative_to(folder)}: {reason}")
        if not added and files:
            raise CommandError("no image was imported")

    @staticmethod
    def check_room(model: Model, incoming: int) -> None:
        """Before reading any file: the dataset must be editable and have room for what the folder holds."""
        try:
            ensure_editable(model)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        have = model.training_images.count()
        _, most = image_count_bounds(model)
        if have + incoming > most:
            raise CommandError(
                f"model {model.public_id} has {have} training images and the folder {incoming}: {have + incoming} "
                f"would pass the maximum of {most}; import fewer (or remove some first)"
            )
