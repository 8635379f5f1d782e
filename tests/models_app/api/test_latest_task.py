"""`trainingProgress` is the model's newest training: after a cancel and a new start, the new one, in the
detail and in the list alike; models trained before `Model.latest_task` existed get theirs from the
migration that added it."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from models_app import selectors
from models_app.models import Model, TrainingTask
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db


def test_a_new_start_is_what_the_model_shows_after_a_cancelled_one(tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 12)
    client = api_client_for(model.team)
    first = client.get(f"/v1/models/{model.public_id}/train").json()["taskId"]
    cancel = client.post(f"/v1/models/{model.public_id}/train/action", {"action": "cancel"}, format="json")
    assert cancel.json()["result"] == "Training canceled"
    second = client.get(f"/v1/models/{model.public_id}/train").json()["taskId"]
    assert second != first
    detail = client.get(f"/v1/models/{model.public_id}").json()["result"]
    assert (detail["trainingProgress"]["taskId"], detail["trainingProgress"]["status"]) == (second, "PENDING")
    listed = client.get("/v1/models").json()["results"]
    assert [row["trainingProgress"]["taskId"] for row in listed] == [second]
    # A model read without the selectors' columns gets the same progress, read on demand.
    plain = Model.objects.get(pk=model.pk)
    assert selectors.model_progress(plain) == selectors.model_progress(
        selectors.model_get(team=model.team, public_id=model.public_id)
    )
    assert str(selectors.model_progress(plain).pk) == second


def test_the_migration_gives_each_existing_model_its_newest_task() -> None:
    migration = importlib.import_module("models_app.migrations.0015_model_latest_task")
    team = TeamFactory()
    never_trained, trained_twice = ModelFactory(team=team), ModelFactory(team=team)
    old = TrainingTask.objects.create(team=team, model=trained_twice, status=TrainingTask.Status.FAILED)
    new = TrainingTask.objects.create(team=team, model=trained_twice, status=TrainingTask.Status.COMPLETED)
    TrainingTask.objects.filter(pk=old.pk).update(created_at=new.created_at.replace(year=new.created_at.year - 1))
    Model.objects.update(latest_task=None)  # as they were before the migration
    migration.set_latest_tasks(apps, None)
    assert Model.objects.get(pk=never_trained.pk).latest_task_id is None
    assert Model.objects.get(pk=trained_twice.pk).latest_task_id == new.pk
