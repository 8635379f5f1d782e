"""Generation jobs: claimed once on the workers, cancelled at once while queued, unpublished if cancelled while running."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.utils import timezone

from models_app.models import Asset, GenerationJob, Model, TrainingTask
from models_app.services.datasets import model_configure
from models_app.services.generation import (
    MAX_ATTEMPTS,
    generation_cancel,
    generation_create,
    generation_job_claim,
    generation_jobs_reap,
)
from models_app.services.training import training_start
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for, wait_for
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


def test_a_running_jobs_cancel_is_shown_at_once_and_survives_its_worker(ready_model: Model, settings) -> None:
    settings.TRAINING_LEASE_SECONDS = 1
    job = generation_create(team=ready_model.team, model=ready_model, prompt="zxq", steps=2)
    assert generation_job_claim(job_id=job.public_id, worker_id="host:gpu0:1:dead") is not None  # then it dies
    client = api_client_for(ready_model.team)
    answer = client.post(f"/v1/jobs/{job.public_id}/cancel").json()["result"]
    assert answer["status"] == "running" and answer["cancelRequestedAt"] is not None
    assert client.get(f"/v1/jobs/{job.public_id}").json()["result"]["cancelRequestedAt"] == answer["cancelRequestedAt"]

    wait_for(lambda: GenerationJob.objects.get(pk=job.pk).lease_expires_at < timezone.now(), timeout=30,
             what="the lease to run out")  # fmt: skip
    report = generation_jobs_reap()
    assert report.cancelled == [job.public_id] and report.requeued == []
    shown = client.get(f"/v1/jobs/{job.public_id}").json()["result"]
    assert shown["status"] == "canceled" and shown["images"] == []


def test_a_job_whose_worker_vanished_is_requeued_then_run_and_failed_after_its_attempts(
    ready_model: Model, settings
) -> None:
    settings.TRAINING_LEASE_SECONDS = 1
    job = generation_create(team=ready_model.team, model=ready_model, prompt="zxq", steps=2)

    def lost_once() -> None:
        assert generation_job_claim(job_id=job.public_id, worker_id="host:gpu0:1:dead") is not None
        wait_for(lambda: GenerationJob.objects.get(pk=job.pk).lease_expires_at < timezone.now(), timeout=30,
                 what="the lease to run out")  # fmt: skip

    lost_once()
    assert generation_jobs_reap().requeued == [job.public_id]
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.PENDING and job.worker_id == "" and job.attempt_count == 1
    settings.TRAINING_LEASE_SECONDS = 300
    assert run_generation_job(job.public_id) == GenerationJob.Status.COMPLETED  # the next worker finishes it
    job.refresh_from_db()
    assert job.attempt_count == 2 and job.images.count() == 1 and job.lease_expires_at is None

    settings.TRAINING_LEASE_SECONDS = 1
    doomed = generation_create(team=ready_model.team, model=ready_model, prompt="zxq", steps=2)
    job = doomed
    for _ in range(MAX_ATTEMPTS - 1):
        lost_once()
        assert generation_jobs_reap().requeued == [doomed.public_id]
    lost_once()
    assert generation_jobs_reap().failed == [doomed.public_id]
    doomed.refresh_from_db()
    assert doomed.status == GenerationJob.Status.FAILED
    assert f"stopped answering (gave up after {MAX_ATTEMPTS} attempts)" in doomed.error_message


def test_a_model_generates_at_its_training_resolution_by_default_and_refuses_far_larger(ready_model: Model) -> None:
    trained = ready_model.trained_task.resolution
    client = api_client_for(ready_model.team)
    accepted = client.post("/v1/images/generation", {"modelID": ready_model.public_id, "prompt": "zxq"}, format="json")
    assert accepted.status_code == 200, accepted.content
    job = GenerationJob.objects.get(public_id=accepted.json()["result"]["jobId"])
    assert (job.width, job.height) == (trained, trained)
    too_big = client.post(
        "/v1/images/generation",
        {"modelID": ready_model.public_id, "prompt": "zxq", "width": 512, "height": 512},
        format="json",
    )
    assert too_big.status_code == 400
    assert f"width may be at most {2 * trained}" in too_big.content.decode()
    assert GenerationJob.objects.count() == 1


def test_the_generation_service_itself_refuses_control_characters_and_long_prompts(ready_model: Model) -> None:
    from models_app.errors import InvalidInput

    for prompt, negative, phrase in (
        ("zxq\x00", "", "prompt contains"),
        ("zxq", "blurry\x07", "negative_prompt contains"),
        ("z" * 2001, "", "prompt must be at most 2000 characters"),
    ):
        with pytest.raises(InvalidInput, match=phrase):
            generation_create(team=ready_model.team, model=ready_model, prompt=prompt, negative_prompt=negative)
    assert not GenerationJob.objects.exists()
