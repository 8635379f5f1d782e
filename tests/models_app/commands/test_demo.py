"""`manage.py demo` as `make demo` runs it: a real qcluster, the tiny base model, SQLite. It shows what the
training learned, reuses its team, key and model on a rerun, and never strands work when it gives up."""

from __future__ import annotations

import io
import re
from pathlib import Path

import psutil
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from PIL import Image

from models_app.models import ApiKey, Model, Team, TrainingTask
from tests.helpers import worker_environment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def demo_environment(settings, monkeypatch: pytest.MonkeyPatch, tiny_sd15: Path) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the demo runs on the embedded defaults (SQLite); once is enough")
    # The demo starts its worker with this process's environment: point it at the test's data.
    for name, value in worker_environment(settings).items():
        monkeypatch.setenv(name, value)


def run_demo(*arguments: str) -> str:
    out = io.StringIO()
    call_command("demo", *arguments, stdout=out)
    return out.getvalue()


def no_cluster_left() -> bool:
    for process in psutil.Process().children(recursive=True):
        try:
            if "qcluster" in " ".join(process.cmdline()):
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_the_demo_shows_what_it_learned_and_a_rerun_reuses_its_team_key_and_model(settings) -> None:
    first = run_demo("--steps", "40", "--timeout", "300")
    held_out = re.search(r"held-out loss \(images it never trained on\): ([\d.]+) before, ([\d.]+) after", first)
    assert held_out is not None, first
    assert float(held_out[2]) < float(held_out[1])  # it learned something about images it never saw
    assert "without the LoRA" in first and "with it" in first
    comparison = Path(settings.VAR_DIR) / "demo" / "before-after.png"
    assert Image.open(comparison).size[0] > 2 * 64  # two pictures side by side
    task = TrainingTask.objects.get()
    assert task.status == TrainingTask.Status.COMPLETED and task.attempt_count == 1
    assert task.worker_id.split(":")[1] == settings.Q_CLUSTER["name"]  # run by the cluster, not this process
    assert Path(task.weights.path).is_file() and task.weights.path in first
    assert f"/admin/models_app/trainingtask/{task.pk}/change/" in first and "/api/docs/" in first
    token = next(line.split()[-1] for line in first.splitlines() if line.strip().startswith("API key"))

    second = run_demo("--steps", "10", "--timeout", "300")
    assert "Reusing model" in second
    assert Team.objects.count() == 1 and ApiKey.objects.count() == 1 and Model.objects.count() == 1
    assert token in second  # the same key still works: printed again
    assert TrainingTask.objects.count() == 2
    assert set(TrainingTask.objects.values_list("status", flat=True)) == {TrainingTask.Status.COMPLETED}
    assert no_cluster_left()


def test_a_demo_that_gives_up_cancels_its_training_and_stops_its_worker() -> None:
    # One second without progress is sure to pass while the worker starts: the demo gives up.
    with pytest.raises(CommandError, match="no progress for 1 s; it was cancelled"):
        run_demo("--steps", "500", "--timeout", "1")
    task = TrainingTask.objects.get()
    assert task.status == TrainingTask.Status.CANCELLED
    assert Model.objects.get().status == Model.Status.CANCELED
    assert no_cluster_left()
