"""Write sample training images (and their captions) to a folder, for the README's examples and for
trying the API or the admin by hand: nothing to download, nothing to find."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from training.engine.testing.images import make_images


class Command(BaseCommand):
    help = "Write N generated shape images as JPEG, each with its caption in a .txt file beside it (kohya layout)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, default=None, help="folder to write (default: var/sample-images)")
        parser.add_argument("--count", type=int, default=15, help="how many images (1-100)")
        parser.add_argument("--trigger-word", default="zxq", help="the word each caption starts with")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["count"] <= 100:
            raise CommandError("--count must be between 1 and 100")
        out: Path = options["out"] or Path(settings.VAR_DIR) / "sample-images"
        out.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(
            make_images(options["count"], trigger_word=options["trigger_word"], seed=3, fmt="JPEG"), start=1
        ):
            path = out / f"sample{index:02d}.jpg"
            path.write_bytes(image.content)
            path.with_suffix(".txt").write_text(image.caption + "\n", encoding="utf-8")
        self.stdout.write(f"{options['count']} images with captions written to {out}")
