"""The admin console through Django's test client: team scoping, the workspace endpoints, actions, queries."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from models_app.models import Membership, Model, Pair, TrainingImage, TrainingTask
from models_app.services.accounts import membership_set
from models_app.services.datasets import model_configure
from models_app.services.training import training_start
from tests.factories import ModelFactory, TeamFactory, UserFactory, add_images
from tests.helpers import png
from tests.models_app.admin.test_forms import NO_TASKS

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    """A plain staff member (not a superuser) whose only grant is their role in a team, as `user create`
    or `team member --role` gives it."""
    user = UserFactory(is_staff=True)
    team = TeamFactory()
    membership_set(team=team, user=user, role=Membership.Role.MEMBER)
    client.force_login(user)
    client.team = team
    client.user = user
    return client


def url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


def upload_file(name: str, content: bytes) -> io.BytesIO:
    handle = io.BytesIO(content)
    handle.name = name
    return handle


def test_staff_see_only_their_teams_models_and_cannot_reach_others(staff, tiny_sd15: Path) -> None:
    own = ModelFactory(team=staff.team, name="Ours")
    other = ModelFactory(name="Theirs")
    add_images(other, 2)
    listing = staff.get(url("models_app_model_changelist")).content.decode()
    assert "Ours" in listing and "Theirs" not in listing
    assert staff.get(url("models_app_model_change", own.pk)).status_code == 200
    assert staff.get(url("models_app_model_change", other.pk)).status_code == 302  # "does not exist" redirect
    image = other.training_images.first()
    for endpoint, data in (
        (url("models_app_model_upload", other.pk), {}),
        (url("models_app_model_caption", other.pk, image.pk), {"description": "x"}),
        (url("models_app_model_start", other.pk), {}),
    ):
        assert staff.post(endpoint, data).status_code == 404, endpoint
    assert TrainingImage.objects.get(pk=image.pk).description != "x"
    # Another model's image through one's own model, and another team's training: not found either.
    assert staff.post(url("models_app_model_caption", own.pk, image.pk), {"description": "x"}).status_code == 404
    assert TrainingImage.objects.get(pk=image.pk).description != "x"
    theirs = TrainingTask.objects.create(team=other.team, model=other, status=TrainingTask.Status.PENDING)
    assert staff.get(url("models_app_task_progress", theirs.pk)).status_code == 404
    assert staff.post(url("models_app_task_cancel", theirs.pk)).status_code == 404
    assert TrainingTask.objects.get(pk=theirs.pk).cancel_requested_at is None


def test_a_superuser_sees_every_team(client) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    ModelFactory(name="Alpha")
    ModelFactory(name="Beta")
    page = client.get(url("models_app_model_changelist")).content.decode()
    assert "Alpha" in page and "Beta" in page


def test_the_workspace_uploads_captions_flags_replaces_and_deletes(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team, parameters={"resolution": 512})
    response = staff.post(
        url("models_app_model_upload", model.pk),
        {"images": [upload_file("a.png", png((600, 600), "red")), upload_file("b.png", png((100, 100), "blue")),
                    upload_file("c.png", png((600, 600), "red"))]},
    )  # fmt: skip
    assert response.json() == {"added": 3}
    bad = staff.post(url("models_app_model_upload", model.pk), {"images": [upload_file("x.png", b"text")]})
    assert bad.status_code == 400 and "'x.png' is not an image" in bad.json()["detail"]
    assert model.training_images.count() == 3

    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert "3 images" in page and "a training needs 12 to 20 images" in page
    assert "small: 100x100, under the 512 px it trains at" in page and "small: 600x600" not in page
    assert page.count('<span class="ws-flag">duplicate of another image here</span>') == 2
    first = model.training_images.order_by("id").first()
    saved = staff.post(url("models_app_model_caption", model.pk, first.pk), {"description": "  a red square "})
    assert saved.json()["description"] == "a red square"

    # The flag compares with the side the model trains at: at 64 px (the demo's) a 100 px image is large enough.
    model_configure(model=model, parameters={"resolution": 64})
    assert "small:" not in staff.get(url("models_app_model_change", model.pk)).content.decode()

    old_id = first.public_id
    replaced = staff.post(
        url("models_app_model_replace_image", model.pk, first.pk),
        {"image": upload_file("n.png", png((600, 600), "green"))},
    )
    assert replaced.status_code == 200 and replaced.json()["id"] != old_id
    assert staff.post(url("models_app_model_delete_image", model.pk, first.pk)).json() == {"ok": True}
    assert model.training_images.count() == 2


def test_parameters_estimate_start_cancel_and_priority(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team)
    add_images(model, 12)
    # The parameters are the model form's fields (tests/models_app/admin/test_parameters_form.py); the
    # estimate beside them follows what was saved.
    form = {"name": model.name, "type": model.type, "trigger_word": model.trigger_word, **NO_TASKS}
    bad = staff.post(url("models_app_model_change", model.pk), {**form, "parameter_steps": "0"})
    assert bad.status_code == 200 and "steps must be at least 1; got 0" in bad.content.decode()
    saved = staff.post(
        url("models_app_model_change", model.pk), {**form, "parameter_steps": "2000", "parameter_resolution": "512"}
    )
    assert saved.status_code == 302 and Model.objects.get(pk=model.pk).parameters == {"steps": 2000, "resolution": 512}
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert "20.00</span> credits" in page and 'Can start</dt><dd id="can-start">yes' in page

    started = staff.post(url("models_app_model_start", model.pk)).json()
    task = TrainingTask.objects.get(model=model)
    assert started["url"] == url("models_app_trainingtask_change", task.pk)
    again = staff.post(url("models_app_model_start", model.pk))
    assert again.status_code == 409 and again.json()["detail"] == "Model is already training"

    assert staff.post(url("models_app_task_priority", task.pk), {"priority": "3"}).json() == {"priority": 3}
    assert staff.post(url("models_app_task_priority", task.pk), {"priority": "9"}).status_code == 400
    progress = staff.get(url("models_app_task_progress", task.pk)).json()
    assert progress["status"] == "PENDING" and progress["finished"] is False
    task_page = staff.get(url("models_app_trainingtask_change", task.pk)).content.decode()
    assert 'id="live-fill"' in task_page and 'id="loss-chart"' in task_page
    assert staff.post(url("models_app_model_cancel", model.pk)).json() == {"status": "CANCELLED"}
    assert Model.objects.get(pk=model.pk).status == Model.Status.CANCELED


def test_the_pairs_editor_saves_pairs_with_the_service_rules(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team, type=Model.Type.EDIT)
    add_images(model, 3)
    ids = [image.public_id for image in model.training_images.select_related("asset")]
    pairs = [{"source_id": ids[0], "target_id": ids[1], "instruction": "night"}]
    assert staff.post(url("models_app_model_pairs", model.pk), {"pairs": json.dumps(pairs)}).json()["count"] == 1
    same = [{"source_id": ids[0], "target_id": ids[0]}]
    refused = staff.post(url("models_app_model_pairs", model.pk), {"pairs": json.dumps(same)})
    assert refused.status_code == 400 and "different images" in refused.json()["detail"]
    page = staff.get(url("models_app_model_change", model.pk)).content.decode()
    assert "Before/after pairs" in page and '"instruction": "night"' in page  # the editor's state
    assert Pair.objects.filter(model=model).count() == 1


def test_list_actions_start_cancel_and_reprioritise(staff, tiny_sd15: Path) -> None:
    models = [ModelFactory(team=staff.team) for _ in range(2)]
    add_images(models[0], 12)
    response = staff.post(
        url("models_app_model_changelist"),
        {"action": "start_training", "_selected_action": [m.pk for m in models]},
        follow=True,
    )
    text = response.content.decode()
    assert "training queued" in text and "the model has 0 training images" in text
    task = TrainingTask.objects.get()
    staff.post(url("models_app_trainingtask_changelist"), {"action": "priority_urgent", "_selected_action": [task.pk]})
    task.refresh_from_db()
    assert task.priority == 3 and task.priority_changed_at is not None
    staff.post(url("models_app_trainingtask_changelist"), {"action": "cancel_tasks", "_selected_action": [task.pk]})
    assert TrainingTask.objects.get().status == TrainingTask.Status.CANCELLED


@pytest.mark.parametrize(
    "page",
    ["models_app_model_changelist", "models_app_trainingtask_changelist", "models_app_trainingimage_changelist",
     "models_app_asset_changelist", "models_app_team_changelist"],
)  # fmt: skip
def test_list_pages_cost_the_same_queries_for_more_rows(client, page: str, tiny_sd15: Path) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    team = TeamFactory()

    def grow(count: int) -> None:
        for _ in range(count):
            model = ModelFactory(team=team)
            add_images(model, 12)
            training_start(model=model)

    grow(1)
    client.get(url(page))
    with CaptureQueriesContext(connection) as few:
        assert client.get(url(page)).status_code == 200
    grow(3)
    with CaptureQueriesContext(connection) as many:
        assert client.get(url(page)).status_code == 200
    assert len(many) == len(few)


def test_the_task_page_lists_each_attempt_with_its_worker_phases_and_outcome(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team)
    add_images(model, 12)
    task = training_start(model=model)
    TrainingTask.objects.filter(pk=task.pk).update(
        status=TrainingTask.Status.TRAINING,
        attempt_count=2,
        attempt_history=[
            {"attempt": 1, "worker": "box1:gpu0:11:aa", "started_at": "2026-11-24T10:00:00", "stage_seconds": {"training": 41.5}},
            {"attempt": 2, "worker": "box2:gpu1:22:bb", "started_at": "2026-11-24T10:09:00", "stage_seconds": {"training": 3.0}},
        ],
    )  # fmt: skip
    page = staff.get(url("models_app_trainingtask_change", task.pk)).content.decode()
    assert "box1:gpu0:11:aa" in page and "training 41.5 s" in page
    assert "lost (the worker stopped answering)" in page  # the first attempt never said how it ended
    assert "box2:gpu1:22:bb" in page and ">running<" in page


def test_a_role_is_what_grants_the_console_and_an_admin_role_also_runs_the_team(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team)
    add_images(model, 12)
    # A member curates and trains...
    assert staff.get(url("models_app_model_change", model.pk)).status_code == 200
    assert staff.post(url("models_app_model_start", model.pk)).status_code == 200
    assert staff.get(url("models_app_trainingtask_changelist")).status_code == 200
    # ...but does not run the team: its settings and API keys are for its admins.
    assert staff.post(url("models_app_team_change", staff.team.pk), {"name": "Renamed"}).status_code == 403
    assert staff.get(url("models_app_apikey_changelist")).status_code == 403
    membership_set(team=staff.team, user=staff.user, role=Membership.Role.ADMIN)
    assert staff.get(url("models_app_apikey_changelist")).status_code == 200
    assert staff.get(url("models_app_team_change", staff.team.pk)).status_code == 200
    # Without a role in any team, a staff account can do nothing at all.
    Membership.objects.filter(user=staff.user).delete()
    from models_app.permissions import user_groups_sync

    user_groups_sync(staff.user)
    assert staff.get(url("models_app_model_change", model.pk)).status_code in (302, 403)
    assert staff.post(url("models_app_model_cancel", model.pk)).status_code in (403, 404)


def test_the_task_page_offers_cancel_only_while_cancellable_and_names_no_stale_status(staff, tiny_sd15: Path) -> None:
    model = ModelFactory(team=staff.team)
    add_images(model, 12)
    task = training_start(model=model)
    page = staff.get(url("models_app_trainingtask_change", task.pk)).content.decode()
    assert 'id="live-cancel" >' in page or 'id="live-cancel">' in page  # offered, not hidden
    assert "(PENDING)" not in page  # the title and breadcrumb carry no status that could go stale
    assert staff.post(url("models_app_task_cancel", task.pk)).status_code == 200
    state = staff.get(url("models_app_task_progress", task.pk)).json()
    assert state["status"] == "CANCELLED" and state["finished"] is True
    page = staff.get(url("models_app_trainingtask_change", task.pk)).content.decode()
    assert 'id="live-cancel" hidden' in page and 'id="live-priority-box" hidden' in page
