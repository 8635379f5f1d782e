"""model_update: the admin's model form, with the rules of model_create and the dataset's lock."""

from pathlib import Path

import pytest

from models_app.errors import Conflict, InvalidInput
from models_app.models import Model
from models_app.services.datasets import (
    model_update,
    training_image_add,
    training_images_autocaption,
    training_images_automatic_captions_store,
    training_images_captions_add_trigger,
    training_images_captions_bulk,
    training_images_captions_replace,
)
from models_app.services.training import training_start
from tests.factories import ModelFactory, ProjectFactory, add_images
from tests.helpers import png

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


# --- captions in bulk --------------------------------------------------------------------------------


def captions(model: Model) -> dict[str, str]:
    return {image.public_id: image.description for image in model.training_images.select_related("asset")}


def test_captions_in_bulk_are_all_written_or_none(tiny_sd15: Path) -> None:
    model = ModelFactory()
    add_images(model, 3)
    before = captions(model)
    first, second, third = before
    changed = training_images_captions_bulk(model=model, captions={first: " one ", second: before[second]})
    assert [image.public_id for image in changed] == [first]  # an unchanged caption is not a change
    assert captions(model) == {**before, first: "one"}

    for bad, message in (
        ({second: "two", third: "x" * 2001}, "at most 2000 characters"),
        ({second: "two", third: "bell\x07"}, "control character"),
        ({second: "two", "asset_nowhere": "three"}, "'asset_nowhere' is not a training image"),
    ):
        with pytest.raises(InvalidInput, match=message):
            training_images_captions_bulk(model=model, captions=bad)
        assert captions(model) == {**before, first: "one"}  # the good caption beside it was not written either

    add_images(model, 9, seed=1)
    training_start(model=model)
    with pytest.raises(Conflict, match="cannot change until training ends"):
        training_images_captions_bulk(model=model, captions={second: "two"})
    with pytest.raises(Conflict, match="cannot change until training ends"):
        training_images_captions_add_trigger(model=model, dry_run=True)
    with pytest.raises(Conflict, match="cannot change until training ends"):
        training_images_captions_replace(model=model, find="a", replace="b", dry_run=True)
    assert captions(model)[second] == before[second]


def test_the_trigger_word_tool_follows_the_engines_rule() -> None:
    from contract.captions import has_trigger, with_trigger

    model = ModelFactory(trigger_word="zxq")
    for text in ("a cat", "Zxq, a cat", "a cat, zxq style", "zxqq cat", ""):
        training_image_add(model=model, content=png((96, 96), "red"), name="a.png", description=text)
    training_images_captions_add_trigger(model=model)
    for image in model.training_images.all():
        # What the tool stored is what the engine would train on: it adds nothing more.
        assert with_trigger(image.description, "zxq") == (" ".join(image.description.split()) or "zxq")
        assert has_trigger(image.description, "zxq") or not image.description
    assert sorted(model.training_images.values_list("description", flat=True)) == [
        "",
        "Zxq, a cat",
        "a cat, zxq style",
        "zxq, a cat",
        "zxq, zxqq cat",
    ]


def test_automatic_captions_fill_only_empty_captions_and_skip_images_gone(settings, tiny_sd15: Path) -> None:
    model = ModelFactory()
    written = training_image_add(model=model, content=png((96, 96), "red"), name="a.png", description="mine")
    empty = training_image_add(model=model, content=png((96, 96), "blue"), name="b.png", description=" ")
    filled = training_images_automatic_captions_store(
        model=model,
        captions={written.public_id: "auto a", empty.public_id: " auto b ", "asset_deleted_meanwhile": "auto c"},
    )
    assert [image.public_id for image in filled] == [empty.public_id]
    written.refresh_from_db()
    empty.refresh_from_db()
    assert (written.description, written.automatic_captioning) == ("mine", "auto a")
    assert (empty.description, empty.automatic_captioning) == ("auto b", "auto b")


def test_auto_captioning_is_queued_on_the_training_workers_only_where_a_model_is_configured(
    settings, django_capture_on_commit_callbacks
) -> None:
    from django_q.models import OrmQ

    model = ModelFactory()
    training_image_add(model=model, content=png((96, 96), "red"), name="a.png")
    settings.TRAINING_CAPTION_MODEL = ""
    with pytest.raises(Conflict, match="no captioning model is configured"):
        training_images_autocaption(model=model)
    settings.TRAINING_CAPTION_MODEL = "/srv/captioner"
    with django_capture_on_commit_callbacks(execute=True):
        assert training_images_autocaption(model=model) == 1
    [message] = OrmQ.objects.filter(key=settings.TRAINING_QUEUE)
    assert message.func() == "training.tasks.caption_images" and message.task["args"] == (model.pk,)
