"""model_update: the admin's model form, with the rules of model_create and the dataset's lock."""

from pathlib import Path

import pytest

from models_app.errors import Conflict, InvalidInput
from models_app.models import Model
from models_app.services.datasets import model_update
from models_app.services.training import training_start
from tests.factories import ModelFactory, ProjectFactory, add_images

pytestmark = pytest.mark.django_db


def fields(model: Model, **changes: object) -> dict[str, object]:
    values = {
        "name": model.name,
        "type": model.type,
        "project": model.project,
        "trigger_word": model.trigger_word,
        "short_description": model.short_description,
    }
    return {**values, **changes}


def test_model_update_sets_the_fields_with_the_create_rules() -> None:
    model = ModelFactory()
    project = ProjectFactory(team=model.team)
    updated = model_update(
        model=model, **fields(model, name=" New ", type="style", project=project, trigger_word=" t ")
    )
    model.refresh_from_db()
    assert (model.name, model.type, model.project_id, model.trigger_word) == ("New", "style", project.pk, "t")
    assert updated.team_id == model.team_id
    with pytest.raises(InvalidInput, match="the project belongs to another team") as raised:
        model_update(model=model, **fields(model, project=ProjectFactory()))
    assert raised.value.field == "projectId"
    with pytest.raises(InvalidInput, match="type must be one of"):
        model_update(model=model, **fields(model, type="sculpture"))
    with pytest.raises(InvalidInput, match="name is required"):
        model_update(model=model, **fields(model, name="  "))
    assert Model.objects.get(pk=model.pk).project_id == project.pk


def test_model_update_is_refused_while_the_model_trains(tiny_sd15: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    training_start(model=model)
    with pytest.raises(Conflict, match="cannot change until training ends"):
        model_update(model=model, **fields(model, name="Renamed"))
    assert Model.objects.get(pk=model.pk).name == model.name
