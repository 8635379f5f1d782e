"""The admin's forms and deletes save through the services: a refusal is a form error or a message, never a
500, and nothing is written. The pages are read as staff read them, through Django's test client."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from models_app.models import Asset, Membership, Model, Pair, Team, TrainingImage
from models_app.services.accounts import membership_set
from models_app.services.datasets import pairs_replace
from models_app.services.training import training_start
from tests.factories import ModelFactory, ProjectFactory, TeamFactory, UserFactory, add_images
from tests.helpers import png

pytestmark = pytest.mark.django_db

# The model page's inline of training tasks (read-only, none posted).
NO_TASKS = {
    "training_tasks-TOTAL_FORMS": "0",
    "training_tasks-INITIAL_FORMS": "0",
    "training_tasks-MIN_NUM_FORMS": "0",
    "training_tasks-MAX_NUM_FORMS": "1000",
}


@pytest.fixture
def staff(client):
    """A plain staff member of two teams (a `member` of both): the form offers both teams' projects."""
    user = UserFactory(is_staff=True)
    client.team, client.other_team = TeamFactory(), TeamFactory()
    for team in (client.team, client.other_team):
        membership_set(team=team, user=user, role=Membership.Role.MEMBER)
    client.force_login(user)
    return client


def url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


def model_form(model: Model, **changes: Any) -> dict[str, Any]:
    """The change form as the page posts it, with `changes`."""
    fields = {
        "name": model.name,
        "project": model.project_id or "",
        "type": model.type,
        "trigger_word": model.trigger_word,
        "short_description": model.short_description,
    }
    return {**fields, **NO_TASKS, **changes}


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code  # the form again, not a redirect or a 500
    return {field: list(errors) for field, errors in response.context["adminform"].form.errors.items()}


def stored(model: Model) -> tuple[Any, ...]:
    row = Model.objects.get(pk=model.pk)
    return (row.name, row.team_id, row.project_id, row.type, row.trigger_word, row.short_description)


def test_the_change_form_refuses_a_project_of_another_team(staff) -> None:
    model = ModelFactory(team=staff.team)
    theirs = ProjectFactory(team=staff.other_team)  # the member's own too, so the form offers it
    before = stored(model)
    response = staff.post(url("models_app_model_change", model.pk), model_form(model, project=theirs.pk))
    assert form_errors(response) == {"project": ["the project belongs to another team"]}
    assert stored(model) == before


def test_the_change_form_saves_through_the_service(staff) -> None:
    model = ModelFactory(team=staff.team)
    ours = ProjectFactory(team=staff.team)
    changes = {"project": ours.pk, "name": "Renamed", "type": Model.Type.STYLE, "trigger_word": " ohwx "}
    response = staff.post(url("models_app_model_change", model.pk), model_form(model, **changes))
    assert response.status_code == 302
    model.refresh_from_db()
    assert (model.name, model.project_id, model.type, model.trigger_word) == ("Renamed", ours.pk, "style", "ohwx")


def test_the_change_form_refuses_every_edit_while_the_model_trains(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team)
    add_images(model, 12)
    training_start(model=model)
    before = stored(model)
    for changes in ({"name": "Renamed mid-training"}, {"type": Model.Type.EDIT}):
        response = staff.post(url("models_app_model_change", model.pk), model_form(model, **changes))
        message = f"model {model.public_id} is queued; its dataset cannot change until training ends"
        assert form_errors(response) == {"__all__": [message]}
        assert message in response.content.decode()
    assert stored(model) == before


def test_the_team_of_a_model_is_shown_but_never_changed(staff) -> None:
    model = ModelFactory(team=staff.team)
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert 'name="team"' not in page and staff.team.name in page  # read-only on its page
    response = staff.post(url("models_app_model_change", model.pk), model_form(model, team=staff.other_team.pk))
    assert response.status_code == 302
    assert Model.objects.get(pk=model.pk).team_id == staff.team.pk


def test_the_add_form_creates_through_the_service(staff) -> None:
    theirs = ProjectFactory(team=staff.other_team)
    new = {"name": "Fresh", "team": staff.team.pk, "type": Model.Type.PRODUCT, "trigger_word": "", **NO_TASKS}
    response = staff.post(url("models_app_model_add"), {**new, "project": theirs.pk})
    assert form_errors(response) == {"project": ["the project belongs to another team"]}
    assert not Model.objects.exists()
    response = staff.post(url("models_app_model_add"), {**new, "short_description": "x" * 5001})
    assert form_errors(response) == {
        "short_description": ["shortDescription must be at most 5000 characters long; got 5001"]
    }
    assert staff.post(url("models_app_model_add"), new).status_code == 302
    model = Model.objects.get()
    assert (model.team_id, model.status, model.parameters) == (staff.team.pk, Model.Status.NEW, {})


def test_a_caption_or_an_image_cannot_be_changed_from_the_image_pages_while_training(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team)
    add_images(model, 12)
    image = model.training_images.first()
    caption = image.description
    training_start(model=model)
    response = staff.post(url("models_app_trainingimage_change", image.pk), {"description": "new words"})
    assert form_errors(response) == {
        "__all__": [f"model {model.public_id} is queued; its dataset cannot change until training ends"]
    }
    response = staff.post(url("models_app_trainingimage_delete", image.pk), {"post": "yes"}, follow=True)
    assert response.redirect_chain[-1][0] == url("models_app_trainingimage_change", image.pk)
    assert "Not deleted: model" in response.content.decode()
    assert TrainingImage.objects.get(pk=image.pk).description == caption


def test_a_caption_saved_from_the_image_page_goes_through_the_caption_rules(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team)
    add_images(model, 1)
    image = model.training_images.get()
    assert (
        staff.post(url("models_app_trainingimage_change", image.pk), {"description": " a red square "}).status_code
        == 302
    )
    assert TrainingImage.objects.get(pk=image.pk).description == "a red square"
    assert staff.post(url("models_app_trainingimage_delete", image.pk), {"post": "yes"}).status_code == 302
    assert not TrainingImage.objects.filter(pk=image.pk).exists()


def test_pairs_are_edited_on_the_models_page_only(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team, type=Model.Type.EDIT)
    add_images(model, 2)
    first, second = (image.public_id for image in model.training_images.select_related("asset"))
    [pair] = pairs_replace(model=model, pairs=[{"source_id": first, "target_id": second, "instruction": "night"}])
    assert staff.get(url("models_app_pair_change", pair.pk)).status_code == 200  # to look at
    assert staff.post(url("models_app_pair_change", pair.pk), {"instruction": "day"}).status_code == 403
    assert staff.post(url("models_app_pair_delete", pair.pk), {"post": "yes"}).status_code == 403
    assert Pair.objects.get(pk=pair.pk).instruction == "night"


def test_memberships_saved_or_deleted_in_the_admin_keep_the_groups_in_step(client) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    team, person = TeamFactory(), UserFactory(is_staff=True)
    added = client.post(url("models_app_membership_add"), {"team": team.pk, "user": person.pk, "role": "admin"})
    assert added.status_code == 302
    assert list(person.groups.values_list("name", flat=True)) == ["Team admins"]
    membership = Membership.objects.get(team=team, user=person)
    client.post(url("models_app_membership_change", membership.pk), {"role": "member"})
    assert list(person.groups.values_list("name", flat=True)) == ["Team trainers"]
    client.post(url("models_app_membership_delete", membership.pk), {"post": "yes"})
    assert not Membership.objects.filter(user=person).exists() and not person.groups.exists()


def test_a_member_removed_from_the_teams_page_loses_the_roles_groups(client) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    team, person = TeamFactory(), UserFactory(is_staff=True)
    membership = membership_set(team=team, user=person, role=Membership.Role.ADMIN)
    inline = {
        "name": team.name,
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "1",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": membership.pk,
        "memberships-0-team": team.pk,
        "memberships-0-user": person.pk,
        "memberships-0-role": "admin",
        "memberships-0-DELETE": "on",
    }
    assert client.post(url("models_app_team_change", team.pk), inline).status_code == 302
    assert not Membership.objects.filter(user=person).exists() and not person.groups.exists()


def test_the_list_cells_come_from_templates_and_one_stylesheet(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team)
    add_images(model, 12)
    task = training_start(model=model)
    models_page = staff.get(url("models_app_model_changelist")).content.decode()
    assert '<span class="console-badge console-badge-queued">queued</span>' in models_page
    assert "models_app/admin.css" in models_page and "style=" not in models_page
    tasks_page = staff.get(url("models_app_trainingtask_changelist")).content.decode()
    assert '<span class="console-badge console-badge-PENDING">PENDING</span>' in tasks_page
    assert '<div class="console-progress"><div class="console-progress-fill" style="width:0%">' in tasks_page
    images_page = staff.get(url("models_app_trainingimage_changelist")).content.decode()
    assert images_page.count('class="console-thumb"') == 12
    for page in (url("models_app_model_change", model.pk), url("models_app_trainingtask_change", task.pk)):
        assert "models_app/admin.css" in staff.get(page).content.decode()
    stylesheet = Path(finders.find("models_app/admin.css")).read_text()
    assert ".console-badge-queued" in stylesheet and ".ws-card" in stylesheet and ".live-fill" in stylesheet


def test_a_team_a_project_and_an_asset_added_in_the_admin_are_made_by_their_services(client) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    person = UserFactory(is_staff=True)
    members = {
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-0-user": person.pk,
        "memberships-0-role": "member",
    }
    assert client.post(url("models_app_team_add"), {"name": "  Studio  ", **members}).status_code == 302
    team = Team.objects.get(name="Studio")  # team_create strips the name
    assert Membership.objects.get(user=person).team == team  # the inline's row, saved by membership_set
    assert list(person.groups.values_list("name", flat=True)) == ["Team trainers"]
    assert client.post(url("models_app_project_add"), {"team": team.pk, "name": "Spring"}).status_code == 302
    again = client.post(url("models_app_project_add"), {"team": team.pk, "name": "Spring"})
    assert form_errors(again) == {"__all__": ["Project with this Team and Name already exists."]}
    upload = io.BytesIO(png((80, 60), "red"))
    upload.name = "red.png"
    added = client.post(url("models_app_asset_add"), {"team": team.pk, "kind": "upload", "file": upload})
    assert added.status_code == 302
    asset = Asset.objects.get(team=team)
    assert (asset.original_name, asset.format, asset.width, asset.height) == ("red.png", "PNG", 80, 60)
    text = io.BytesIO(b"not an image")
    text.name = "notes.png"
    refused = client.post(url("models_app_asset_add"), {"team": team.pk, "kind": "upload", "file": text})
    assert "'notes.png' is not an image" in form_errors(refused)["file"][0]
    assert Asset.objects.filter(team=team).count() == 1


def test_a_model_deleted_in_the_admin_is_deleted_as_through_the_api(client, tiny_sd15: Path) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    model = ModelFactory()
    add_images(model, 12)
    task = training_start(model=model)
    confirmation = client.get(url("models_app_model_delete", model.pk)).content.decode()
    assert "<li>Models: 1</li>" in confirmation and "Training images: 12" not in confirmation  # nothing else goes
    assert client.post(url("models_app_model_delete", model.pk), {"post": "yes"}).status_code == 302
    model.refresh_from_db()
    task.refresh_from_db()
    assert model.status == Model.Status.DELETED and model.deleted_at is not None
    assert task.status == "CANCELLED" and model.training_images.count() == 12
