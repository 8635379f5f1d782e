"""What the management commands share: finding the team, turning application errors into one-line
command errors, and progress that suits a terminal or a log."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

from django.core.management.base import CommandError

from models_app.errors import ApplicationError
from models_app.input_rules import public_id_plausible
from models_app.models import Model, Team

T = TypeVar("T")


def team_by_id(team_id: str | None) -> Team:
    if team_id and not public_id_plausible(team_id):
        raise CommandError(f"team {team_id!r} not found")
    if not team_id:
        teams = list(Team.objects.all()[:2])
        if len(teams) == 1:
            return teams[0]
        raise CommandError("name the team with --team-id (there are several, or none)")
    team = Team.objects.filter(public_id=team_id).first()
    if team is None:
        raise CommandError(f"team {team_id} not found")
    return team


def model_by_id(model_id: str) -> Model:
    if not public_id_plausible(model_id):
        raise CommandError(f"model {model_id!r} not found")
    model = Model.objects.select_related("team").filter(public_id=model_id).exclude(status=Model.Status.DELETED).first()
    if model is None:
        raise CommandError(f"model {model_id} not found")
    return model


@contextmanager
def application_errors() -> Iterator[None]:
    """Bad input ends the command with its one-line message and a non-zero exit."""
    try:
        yield
    except ApplicationError as exc:
        raise CommandError(exc.message) from exc


def progress(items: Iterable[T], *, total: int, description: str, stream: TextIO | None = None) -> Iterable[T]:
    """A tqdm bar on a terminal; plain numbered lines otherwise (logs, CI, pipes)."""
    out = stream or sys.stderr
    if getattr(out, "isatty", lambda: False)():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=description, file=out)
        return
    for index, item in enumerate(items, start=1):
        yield item
        print(f"{description}: {index}/{total}", file=out, flush=True)
