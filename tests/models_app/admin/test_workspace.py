"""The dataset workspace on a model's page, through Django's test client: thumbnails, flags per captioning
strategy and model type, the caption tools, the pairs editor, the live lock and the page's one save."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image

from models_app.models import Membership, Model, TrainingImage
from models_app.services.accounts import membership_set
from models_app.services.training import training_start
from tests.factories import ModelFactory, TeamFactory, UserFactory, add_images
from tests.helpers import png, run_queued
from tests.models_app.admin.test_forms import model_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    """A plain staff member whose only grant is the `member` role in a team."""
    user = UserFactory(is_staff=True)
    team = TeamFactory()
    membership_set(team=team, user=user, role=Membership.Role.MEMBER)
    client.force_login(user)
    client.team = team
    return client


def url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


def page_state(client, model: Model) -> dict:
    """The state the page embeds for its script (the same as the polled endpoint's)."""
    page = client.get(url("models_app_model_change", model.pk)).content.decode()
    start = page.index('<script id="workspace-state" type="application/json">') + len(
        '<script id="workspace-state" type="application/json">'
    )
    return json.loads(page[start : page.index("</script>", start)])


def image_with_caption(model: Model, description: str, *, size: tuple[int, int] = (600, 600), colour: str = "red"):
    from models_app.services.datasets import training_image_add

    return training_image_add(model=model, content=png(size, colour), name=f"{colour}.png", description=description)


# --- thumbnails ---------------------------------------------------------------------------------------


def test_the_grid_shows_generated_thumbnails_of_the_whole_image_through_signed_urls(staff) -> None:
    model = ModelFactory(team=staff.team)
    image = image_with_caption(model, "wide", size=(1200, 600))
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    maker = url("models_app_model_thumbnail", model.pk, image.pk)
    assert f'src="{maker}"' in page  # no thumbnail yet: the view that makes it
    assert f'src="{image.asset.file.url}' not in page  # never the original scaled by the browser

    made = staff.get(maker)
    assert made.status_code == 302
    location = made["Location"]
    assert location.startswith("/media/thumbnails/") and location.split("?")[0].endswith(".webp")
    assert "token=" in location
    served = staff.get(location)
    assert served.status_code == 200 and served["Content-Type"] == "image/webp"
    with Image.open(io.BytesIO(b"".join(served.streaming_content))) as thumbnail:
        assert thumbnail.size == (384, 192)  # the whole image in a 384 px box: not cropped, aspect kept
    assert staff.get(location.split("?")[0]).status_code == 403  # unsigned: refused like every media URL

    image.asset.refresh_from_db()
    name = image.asset.thumbnail.name
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert maker not in page and f"/media/{name}?token=" in page  # made once, then linked directly
    assert staff.get(maker)["Location"].split("?")[0] == f"/media/{name}"  # not made twice


def test_thumbnails_are_for_the_users_own_teams_only(staff) -> None:
    other = ModelFactory()
    image = image_with_caption(other, "theirs")
    assert staff.get(url("models_app_model_thumbnail", other.pk, image.pk)).status_code == 404
    image.asset.refresh_from_db()
    assert not image.asset.thumbnail


# --- flags ----------------------------------------------------------------------------------------------


def problems(client, model: Model) -> dict[str, list[str]]:
    return {image["description"] or image["name"]: image["problems"] for image in page_state(client, model)["images"]}


def test_no_caption_is_flagged_only_where_the_training_reads_the_captions(staff) -> None:
    trigger_only = ModelFactory(team=staff.team)  # the default strategy: captions are not used
    image_with_caption(trigger_only, "")
    assert problems(staff, trigger_only) == {"red.png": []}
    assert (
        "trigger_only: every image trains on the trigger word alone"
        in page_state(staff, trigger_only)["captions"]["strategy_note"]
    )

    described = ModelFactory(team=staff.team, parameters={"preprocessing_captioning_strategy": "description"})
    empty = image_with_caption(described, "")
    assert problems(staff, described) == {"red.png": ["no caption"]}
    saved = staff.post(url("models_app_model_caption", described.pk, empty.pk), {"description": "zxq, a red square"})
    answer = saved.json()
    assert (answer["description"], answer["problems"]) == ("zxq, a red square", [])  # the flag clears on save
    assert answer["state"]["images"][0]["problems"] == []
    assert problems(staff, described) == {"zxq, a red square": []}

    edit = ModelFactory(
        team=staff.team, type=Model.Type.EDIT, parameters={"preprocessing_captioning_strategy": "description"}
    )
    image_with_caption(edit, "")
    assert problems(staff, edit) == {"red.png": []}  # an edit model's captions are its pairs' instructions

    kohya = ModelFactory(team=staff.team, parameters={"preprocessing_captioning_strategy": "filename"})
    image_with_caption(kohya, "")
    assert problems(staff, kohya) == {"red.png": ["no caption file"]}


# --- caption tools --------------------------------------------------------------------------------------


def test_the_trigger_word_is_added_to_the_captions_that_lack_it(staff) -> None:
    model = ModelFactory(team=staff.team, trigger_word="zxq")
    lacking = image_with_caption(model, "a red square", colour="red")
    image_with_caption(model, "zxq, a blue square", colour="blue")
    image_with_caption(model, "a ZXQ on a hill", colour="green")  # any case counts, as in the engine
    empty = image_with_caption(model, "", colour="yellow")
    assert page_state(staff, model)["captions"]["lacking_trigger"] == 1

    preview = staff.post(url("models_app_model_captions_trigger", model.pk), {"preview": "1"}).json()
    assert preview["changed"] == 1 and preview["preview"] is True
    assert TrainingImage.objects.get(pk=lacking.pk).description == "a red square"  # a preview writes nothing

    done = staff.post(url("models_app_model_captions_trigger", model.pk)).json()
    assert done["changed"] == 1 and done["state"]["captions"]["lacking_trigger"] == 0
    assert TrainingImage.objects.get(pk=lacking.pk).description == "zxq, a red square"
    assert TrainingImage.objects.get(pk=empty.pk).description == ""  # left for someone to write
    assert sorted(model.training_images.values_list("description", flat=True)) == [
        "",
        "a ZXQ on a hill",
        "zxq, a blue square",
        "zxq, a red square",
    ]
    assert staff.post(url("models_app_model_captions_trigger", model.pk)).json()["changed"] == 0

    no_trigger = ModelFactory(team=staff.team, trigger_word="")
    image_with_caption(no_trigger, "a cat")
    refused = staff.post(url("models_app_model_captions_trigger", no_trigger.pk))
    assert refused.status_code == 400 and "has no trigger word" in refused.json()["detail"]


def test_find_and_replace_previews_the_count_then_replaces(staff) -> None:
    model = ModelFactory(team=staff.team)
    first = image_with_caption(model, "a red square, red all over", colour="red")
    second = image_with_caption(model, "a blue square", colour="blue")
    image_with_caption(model, "a Red circle", colour="green")  # case is part of the text

    endpoint = url("models_app_model_captions_replace", model.pk)
    preview = staff.post(endpoint, {"find": "red", "replace": "crimson", "preview": "1"}).json()
    assert (preview["changed"], preview["occurrences"], preview["preview"]) == (1, 2, True)
    assert TrainingImage.objects.get(pk=first.pk).description == "a red square, red all over"

    # The captions changed since the preview: nothing is written, and the page is told to preview again.
    staff.post(url("models_app_model_caption", model.pk, second.pk), {"description": "a red-blue square"})
    stale = staff.post(endpoint, {"find": "red", "replace": "crimson", "expected": "1"})
    assert stale.status_code == 409 and "changed since the preview" in stale.json()["detail"]
    assert TrainingImage.objects.get(pk=first.pk).description == "a red square, red all over"

    done = staff.post(endpoint, {"find": "red", "replace": "crimson", "expected": "2"}).json()
    assert done["changed"] == 2 and done["occurrences"] == 3
    assert sorted(model.training_images.values_list("description", flat=True)) == [
        "a Red circle",
        "a crimson square, crimson all over",
        "a crimson-blue square",
    ]
    assert {image["description"] for image in done["state"]["images"]} >= {"a crimson-blue square"}

    empty = staff.post(endpoint, {"find": "", "replace": "x", "preview": "1"})
    assert empty.status_code == 400 and empty.json()["detail"] == "write the text to find"
    too_long = staff.post(endpoint, {"find": "a", "replace": "x" * 2001})
    assert too_long.status_code == 400


def test_auto_caption_says_why_it_is_disabled_without_a_captioning_model(staff, settings) -> None:
    settings.TRAINING_CAPTION_MODEL = ""
    model = ModelFactory(team=staff.team)
    image_with_caption(model, "")
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert 'id="autocaption" disabled' in page
    assert "Not available: no captioning model is configured on this server (set TRAINING_CAPTION_MODEL)" in page
    refused = staff.post(url("models_app_model_captions_automatic", model.pk))
    assert refused.status_code == 409 and "not available" in refused.json()["detail"]


@pytest.mark.slow
def test_auto_caption_all_captions_every_image_on_the_worker_and_keeps_written_captions(
    staff, settings, tmp_path: Path, django_capture_on_commit_callbacks
) -> None:
    from training.engine.testing import build_tiny_captioner

    settings.TRAINING_CAPTION_MODEL = str(build_tiny_captioner(tmp_path / "tiny-blip"))
    model = ModelFactory(team=staff.team)
    written = image_with_caption(model, "a caption someone wrote", colour="red")
    empty = image_with_caption(model, "", colour="blue")
    assert 'id="autocaption" disabled' not in staff.get(url("models_app_model_change", model.pk)).content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        queued = staff.post(url("models_app_model_captions_automatic", model.pk))
    assert queued.json() == {"queued": 2}
    assert TrainingImage.objects.get(pk=empty.pk).description == ""  # nothing before the worker runs
    [summary] = run_queued()
    assert summary == "2 images captioned, 1 empty captions filled"
    written.refresh_from_db()
    empty.refresh_from_db()
    assert written.automatic_captioning and written.description == "a caption someone wrote"
    assert empty.automatic_captioning and empty.description == empty.automatic_captioning
    assert page_state(staff, model)["captions"]["automatic_count"] == 2


# --- while training -------------------------------------------------------------------------------------


def test_while_training_every_write_is_refused_with_a_409_and_nothing_is_half_written(
    staff, settings, tiny_sd15: Path
) -> None:
    settings.TRAINING_CAPTION_MODEL = str(tiny_sd15)  # configured: refused for the training, not for that
    model = ModelFactory(team=staff.team, trigger_word="zxq")
    add_images(model, 12)
    model.training_images.update(description="a shape")
    state = page_state(staff, model)
    assert state["locked"] is False and state["can_cancel"] is False and state["can_start"] is True
    task = training_start(model=model)

    image = model.training_images.first()
    ids = [i.public_id for i in model.training_images.select_related("asset")[:2]]
    writes = [
        (url("models_app_model_captions_trigger", model.pk), {}),
        (url("models_app_model_captions_replace", model.pk), {"find": "shape", "replace": "form"}),
        (url("models_app_model_captions_replace", model.pk), {"find": "shape", "replace": "x", "preview": "1"}),
        (url("models_app_model_captions_automatic", model.pk), {}),
        (url("models_app_model_caption", model.pk, image.pk), {"description": "changed"}),
        (url("models_app_model_pairs", model.pk), {"pairs": json.dumps([{"source_id": ids[0], "target_id": ids[1]}])}),
    ]
    for endpoint, data in writes:
        refused = staff.post(endpoint, data)
        assert refused.status_code == 409, endpoint
        assert (
            refused.json()["detail"]
            == f"model {model.public_id} is queued; its dataset cannot change until training ends"
        )
    assert set(model.training_images.values_list("description", flat=True)) == {"a shape"}
    assert not model.pairs.exists()

    state = staff.get(url("models_app_model_state", model.pk)).json()
    assert state["locked"] is True and state["can_cancel"] is True and state["can_start"] is False
    assert state["reason"].startswith("A training is queued: the dataset, captions, pairs and settings are read-only")
    assert state["task"] == {
        "url": url("models_app_trainingtask_change", task.pk),
        "status": "PENDING",
        "progress": 0,
        "live": True,
    }
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert 'id="ws-lock" role="status" >' in page or 'id="ws-lock" role="status">' in page  # shown
    assert f'id="ws-lock-task" href="{url("models_app_trainingtask_change", task.pk)}"' in page
    assert 'id="cancel-training" >' in page or 'id="cancel-training">' in page  # enabled

    assert staff.post(url("models_app_model_cancel", model.pk)).status_code == 200
    state = staff.get(url("models_app_model_state", model.pk)).json()
    assert state["locked"] is False and state["can_cancel"] is False and state["reason"] == ""
    assert staff.post(url("models_app_model_captions_trigger", model.pk)).json()["changed"] == 12


def test_a_model_without_a_live_training_shows_no_banner_and_no_cancel(staff) -> None:
    model = ModelFactory(team=staff.team)
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert 'id="ws-lock" role="status" hidden' in page
    assert 'id="cancel-training" disabled' in page


def test_the_state_is_for_the_users_own_teams_only(staff) -> None:
    other = ModelFactory()
    assert staff.get(url("models_app_model_state", other.pk)).status_code == 404
    assert staff.post(url("models_app_model_captions_trigger", other.pk)).status_code == 404
    assert staff.post(url("models_app_model_captions_replace", other.pk), {"find": "a"}).status_code == 404


# --- pairs ----------------------------------------------------------------------------------------------


def test_the_pairs_editor_picks_images_by_thumbnail_and_saves_the_whole_list(staff) -> None:
    model = ModelFactory(team=staff.team, type=Model.Type.EDIT)
    images = [image_with_caption(model, "", colour=colour) for colour in ("red", "blue", "green")]
    ids = [image.public_id for image in images]
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    for image in images:  # the picker shows each image as its thumbnail, by id
        assert (
            f'class="picker-item" data-id="{image.public_id}"><img src="{url("models_app_model_thumbnail", model.pk, image.pk)}"'
            in page
        )

    pairs = [
        {"source_id": ids[0], "target_id": ids[1], "instruction": "make it blue"},
        {"source_id": ids[0], "target_id": ids[2], "instruction": ""},
    ]
    saved = staff.post(url("models_app_model_pairs", model.pk), {"pairs": json.dumps(pairs)}).json()
    shown = [{**pair, "extra_source_ids": []} for pair in pairs]
    assert saved == {"count": 2, "pairs": shown}
    assert page_state(staff, model)["pairs"] == shown
    edited = [{**pairs[1], "instruction": "make it green", "extra_source_ids": [ids[1]]}]
    assert staff.post(url("models_app_model_pairs", model.pk), {"pairs": json.dumps(edited)}).json()["pairs"] == edited
    assert list(model.pairs.values_list("instruction", flat=True)) == ["make it green"]


# --- one way to save ------------------------------------------------------------------------------------


def test_the_form_keeps_one_clearly_labelled_save_that_stays_on_the_page(staff) -> None:
    model = ModelFactory(team=staff.team, name="Before")
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert page.count('<input type="submit"') == 1  # (the header's log-out button is a <button>)
    assert 'value="Save settings" class="default" name="_continue"' in page
    assert "_addanother" not in page and 'name="_save"' not in page
    response = staff.post(url("models_app_model_change", model.pk), model_form(model, name="After", _continue="Save"))
    assert response.status_code == 302 and response["Location"] == url("models_app_model_change", model.pk)
    assert Model.objects.get(pk=model.pk).name == "After"


def test_the_estimate_names_the_base_models_family(staff, tiny_models: dict[str, Path]) -> None:
    from models_app.services.datasets import model_configure

    model = ModelFactory(team=staff.team)
    model_configure(model=model, parameters={"base_model_path": str(tiny_models["sd3"]), "steps": 50})
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert "<dt>Family</dt><dd>SD 3.5 (sd3) at 64 px, 50 steps</dd>" in page
