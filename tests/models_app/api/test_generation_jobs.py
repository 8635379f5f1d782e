"""Generation jobs: claimed once on the workers, cancelled at once while queued, unpublished if cancelled while running."""

from __future__ import annotations

from pathlib import Path

import pytest

from models_app.models import Asset, GenerationJob, Model, TrainingTask
from models_app.services.datasets import model_configure
from models_app.services.generation import generation_cancel, generation_create
from models_app.services.training import training_start
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for
from training.generation import run_generation_job
from training.runner import run_training_task

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def ready_model(tiny_sd15: Path, fast_training: dict) -> Model:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, "steps": 2})
    assert run_training_task(str(training_start(model=model).pk)) == TrainingTask.Status.COMPLETED
    model.refresh_from_db()
    return model


def test_a_queued_job_is_cancelled_at_once_and_never_runs(ready_model: Model) -> None:
    job = generation_create(team=ready_model.team, model=ready_model, prompt="zxq", steps=2)
    response = api_client_for(ready_model.team).post(f"/v1/jobs/{job.public_id}/cancel")
    assert response.status_code == 200 and response.json()["result"]["status"] == "canceled"
    assert run_generation_job(job.public_id) == "not-claimed"
    again = api_client_for(ready_model.team).post(f"/v1/jobs/{job.public_id}/cancel")
    assert again.status_code == 409


def test_a_job_cancelled_while_running_publishes_no_images(ready_model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    job = generation_create(team=ready_model.team, model=ready_model, prompt="zxq", steps=2)
    from training import generation as generation_module

    real_generation = generation_module.generate_with_model

    def user_cancels_meanwhile(**kwargs):
        generation_cancel(job=GenerationJob.objects.get(pk=job.pk))  # the cancel arrives while images are made
        return real_generation(**kwargs)

    monkeypatch.setattr(generation_module, "generate_with_model", user_cancels_meanwhile)
    assert run_generation_job(job.public_id) == GenerationJob.Status.CANCELED
    job.refresh_from_db()
    assert job.images.count() == 0
    assert not Asset.objects.filter(kind=Asset.Kind.GENERATED).exists()
