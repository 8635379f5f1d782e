"""The demo's path end to end: start through the service, the queue, the runner, the weights, generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.utils.module_loading import import_string
from django_q.models import OrmQ

from models_app.models import Asset, Model, TrainingTask
from models_app.services.datasets import model_configure
from models_app.services.training import training_start
from tests.factories import ModelFactory, add_images
from training.engine.generate import generate
from training.generation import generate_with_model

pytestmark = pytest.mark.slow


def assert_lora_changes_output(base_model: Path, weights: Path) -> None:
    common = {"base_model": str(base_model), "prompt": "zxq, a blue circle", "steps": 3, "seed": 3}
    plain = np.asarray(generate(**common)[0], dtype=np.float32)
    tuned = np.asarray(generate(**common, lora_path=weights)[0], dtype=np.float32)
    assert np.abs(plain - tuned).mean() > 0.01


@pytest.mark.django_db
def test_a_started_training_goes_through_the_queue_to_ready_weights(
    tiny_sd15: Path,
    fast_training: dict,
    django_capture_on_commit_callbacks,
) -> None:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters=fast_training)
    with django_capture_on_commit_callbacks(execute=True):
        task = training_start(model=model)

    # The start put one "run the next training" message on django-q2's ORM queue; run it as the worker would.
    [queued] = OrmQ.objects.all()
    assert queued.task["func"] == "training.tasks.run_next_training"
    task.refresh_from_db()
    assert task.celery_training_task_id == queued.task["id"]
    assert import_string(queued.task["func"])(*queued.task["args"]) == TrainingTask.Status.COMPLETED

    task.refresh_from_db()
    model.refresh_from_db()
    assert model.status == Model.Status.READY
    assert model.trained_task_id == task.pk
    assert task.status == TrainingTask.Status.COMPLETED
    assert (task.current_step, task.total_steps, task.progress, task.eta_seconds) == (20, 20, 100.0, 0)
    assert task.attempt_count == 1
    assert task.started_at and task.preprocessing_completed_at and task.completed_at
    assert task.processed_files_count == task.total_files_count == 12
    assert "training started" in task.logs
    # Where the time went, phase by phase, from the start call to the end.
    phases = ("queue", "downloading", "preprocessing", "caching", "loading", "training", "exporting")
    assert set(task.stage_seconds) == set(phases)  # (PostgreSQL's jsonb does not keep the keys' order)
    assert all(task.stage_seconds[phase] >= 0 for phase in phases) and task.stage_seconds["training"] > 0
    total = (task.completed_at - task.created_at).total_seconds()
    assert sum(task.stage_seconds.values()) == pytest.approx(total, abs=1.0)
    assert task.weights.name == f"training/{task.pk}/pytorch_lora_weights.safetensors"
    assert_lora_changes_output(tiny_sd15, Path(task.weights.path))

    # A second delivery of the same queue message (at-least-once) finds nothing to do.
    assert import_string(queued.task["func"])(*queued.task["args"]) == "idle"
    task.refresh_from_db()
    assert task.attempt_count == 1

    [asset] = generate_with_model(model=model, prompt="zxq, a red square", steps=3)
    assert asset.kind == Asset.Kind.GENERATED and (asset.width, asset.height) == (64, 64)


@pytest.mark.django_db
def test_a_training_that_fails_records_why(tiny_sd15: Path, fast_training: dict) -> None:
    from training.runner import run_training_task

    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, "preprocessing_captioning_strategy": "automatic"})
    task = training_start(model=model)
    assert run_training_task(str(task.pk)) == TrainingTask.Status.FAILED
    task.refresh_from_db()
    model.refresh_from_db()
    assert model.status == Model.Status.FAILED
    assert "preprocessing_captioning_strategy 'automatic' is not available on this server" in task.error_message
    assert not task.weights
