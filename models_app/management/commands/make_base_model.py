"""Build a small random-weight base model of a family and save it as a diffusers folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from contract.families import DEMO_FAMILY, FAMILY_KEYS
from training.engine.errors import EngineError
from training.engine.testing import build_tiny_model


class Command(BaseCommand):
    help = "Build a tiny random-weight base model (for tests, demos and CPU runs); nothing is downloaded."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--family", choices=FAMILY_KEYS, default=DEMO_FAMILY, help=f"the model family (default: {DEMO_FAMILY})"
        )
        parser.add_argument("--out", required=True, type=Path, help="folder to create (must not exist)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")

    def handle(self, *args: Any, **options: Any) -> None:
        out: Path = options["out"]
        # The quick checks first: building takes a while, and its result could not be written anyway.
        if out.exists():
            raise CommandError(f"{out} already exists; give a new folder")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"cannot create {out.parent}: {exc.strerror or exc}") from exc
        if not os.access(out.parent, os.W_OK):
            raise CommandError(f"cannot write in {out.parent}")
        try:
            path = build_tiny_model(options["family"], out, seed=options["seed"])
        except EngineError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from exc
        self.stdout.write(f"{options['family']} tiny model written to {path}")
