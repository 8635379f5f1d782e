"""The read serializers' own output loop (PlannedOutput) answers exactly what DRF's generic loop would."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from django.core.files.base import ContentFile
from django.test import RequestFactory
from django.utils import timezone
from rest_framework import serializers

from models_app import selectors
from models_app.api.serializers import ModelSerializer, TrainingProgressSerializer, TrainingTaskSerializer
from models_app.models import Model, TrainingTask
from tests.factories import ModelFactory, ProjectFactory, TeamFactory, add_images

# Signed URLs carry the second they were signed at: the signer's clock is fixed for the comparisons.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fixed_signing_clock")]


def drf_output(serializer: serializers.Serializer, instance: object) -> object:
    """What DRF's own Serializer.to_representation makes of `instance`."""
    return serializers.Serializer.to_representation(serializer, instance)


def test_models_and_tasks_serialize_as_drf_would() -> None:
    team = TeamFactory()
    plain = ModelFactory(team=team)  # no project, no images, no task
    add_images(plain, 2)
    trained = ModelFactory(team=team, project=ProjectFactory(team=team), parameters={"steps": 30, "rank": 4})
    done = TrainingTask.objects.create(
        team=team, model=trained, trigger_word="zxq", status=TrainingTask.Status.COMPLETED, progress=100.0,
        current_step=30, total_steps=30, loss=0.123456789012345678, sample_prompts=["a", "b"],
        preprocessing_transforms=[{"type": "resize"}],
    )  # fmt: skip
    done.weights.save("weights.safetensors", ContentFile(b"weights"), save=True)
    Model.objects.filter(pk=trained.pk).update(trained_task=done, status=Model.Status.READY)
    running = TrainingTask.objects.create(
        team=team, model=trained, trigger_word="zxq", status=TrainingTask.Status.PREPROCESSING,
        preprocessing_stage="captioning", progress=12.5, eta_seconds=77, error_message="slow",
    )  # fmt: skip
    Model.objects.filter(pk=trained.pk).update(latest_task=running)  # as training_start sets it
    request = RequestFactory().get("/v1/models", HTTP_HOST="localhost")
    for models in (
        list(selectors.model_list(team=team)),
        [selectors.model_get(team=team, public_id=trained.public_id)],
    ):
        serializer = ModelSerializer(models, many=True, context={"request": request}).child
        for model in models:
            assert serializer.to_representation(model) == drf_output(serializer, model)
            task = selectors.model_progress(model)
            assert (task.pk if task else None) == (running.pk if model.pk == trained.pk else None)
            if task is not None:
                progress = TrainingProgressSerializer()
                assert progress.to_representation(task) == drf_output(progress, task)
    tasks = list(selectors.training_task_list(team=team)) + list(TrainingTask.objects.filter(team=team))
    assert len(tasks) == 4
    serializer = TrainingTaskSerializer()
    for task in tasks:
        assert serializer.to_representation(task) == drf_output(serializer, task)


def test_each_serializer_formats_with_its_own_request(settings) -> None:
    """The output plan is made once per class; what a method field reads of the context is still the
    request at hand (here, the host of the weights' URL)."""
    settings.ALLOWED_HOSTS = ["one.example", "two.example"]
    trained = ModelFactory()
    done = TrainingTask.objects.create(team=trained.team, model=trained, status=TrainingTask.Status.COMPLETED)
    done.weights.save("weights.safetensors", ContentFile(b"weights"), save=True)
    Model.objects.filter(pk=trained.pk).update(trained_task=done, status=Model.Status.READY)
    model = selectors.model_get(team=trained.team, public_id=trained.public_id)
    urls = [
        ModelSerializer(model, context={"request": RequestFactory().get("/", HTTP_HOST=host)}).data["weightsUrl"]
        for host in ("one.example", "two.example")
    ]
    assert urls[0].startswith("http://one.example/") and urls[1].startswith("http://two.example/")


def test_timestamps_are_utc_whatever_timezone_is_active() -> None:
    """As the seed documents show them ("2022-04-13T15:42:05.901Z"), even where a request activated
    another timezone."""
    model = ModelFactory()
    task = TrainingTask.objects.create(team=model.team, model=model, status=TrainingTask.Status.COMPLETED)
    Model.objects.filter(pk=model.pk).update(latest_task=task)
    row = selectors.model_get(team=model.team, public_id=model.public_id)
    expected = row.created_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    with timezone.override(zoneinfo.ZoneInfo("Europe/Paris")):
        shown = ModelSerializer(row).data
        task_shown = TrainingTaskSerializer(task).data
    assert shown["createdAt"] == expected and expected.endswith("Z")
    assert task_shown["created_at"] == task.created_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
