"""The admin's index is a training dashboard: running tasks live, the queue in claim order, recent failures
and the GPU workers, each staff member seeing their own teams' only; its JSON; its constant query count."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from models_app.models import Membership, Team, TrainingTask, WorkerMachine
from models_app.services.accounts import membership_set
from models_app.services.worker_protocol import training_task_claim_next
from tests.factories import ModelFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db

INDEX = "admin:index"
LIVE = "admin:dashboard_live"
WORKER = "gpu-box-1:gpu0:4242:abcd1234"


@pytest.fixture
def staff(client):
    """A plain staff member (no superuser flag) whose one grant is the `member` role in a team."""
    user = UserFactory(is_staff=True)
    team = TeamFactory(name="Studio")
    membership_set(team=team, user=user, role=Membership.Role.MEMBER)
    client.force_login(user)
    client.team = team
    client.user = user
    return client


def make_task(team: Team, status: str, *, name: str = "", age_minutes: int = 0, **fields: Any) -> TrainingTask:
    """A task in any state, written directly: the dashboard reads rows, no training needs to run."""
    model = ModelFactory(team=team, **({"name": name} if name else {}))
    task = TrainingTask.objects.create(
        team=team, model=model, trigger_word="zxq", base_model_path="tiny-sd15", status=status, **fields
    )
    if age_minutes:
        TrainingTask.objects.filter(pk=task.pk).update(created_at=timezone.now() - timedelta(minutes=age_minutes))
    return task


def running(team: Team, *, name: str = "", lease_seconds: int = 240, **fields: Any) -> TrainingTask:
    now = timezone.now()
    values = {
        "current_step": 504,
        "total_steps": 1200,
        "progress": 42.0,
        "loss": 0.12345,
        "eta_seconds": 3900,
        "worker_id": WORKER,
        "attempt_count": 1,
        "started_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        **fields,
    }
    return make_task(team, values.pop("status", TrainingTask.Status.TRAINING), name=name, **values)


def failed(
    team: Team, *, name: str = "", reason: str = "out_of_memory", message: str = "CUDA out of memory"
) -> TrainingTask:
    return make_task(
        team,
        TrainingTask.Status.FAILED,
        name=name,
        failure_reason=reason,
        error_message=message,
        attempt_count=1,
        completed_at=timezone.now(),
    )


def section(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}".*?</table>|id="{element_id}".*?</p>', page, re.S)
    assert match, f"no #{element_id} on the page"
    return match.group(0)


def test_the_index_is_the_dashboard_of_the_staff_members_teams_with_the_app_list_below(staff) -> None:
    ours = running(staff.team, name="Our portrait LoRA")
    make_task(staff.team, TrainingTask.Status.PENDING, name="Our queued style")
    failed(staff.team, name="Our broken run")
    other = TeamFactory(name="Elsewhere")
    running(other, name="Their secret LoRA", worker_id="gpu-box-2:gpu1:99:ffff0000")
    make_task(other, TrainingTask.Status.PENDING, name="Their queued run")
    failed(other, name="Their broken run")

    page = staff.get(reverse(INDEX)).content.decode()

    assert 'id="board"' in page and "your teams only" in page
    assert "Our portrait LoRA" in page and "Our queued style" in page and "Our broken run" in page
    assert "Their" not in page and "gpu-box-2" not in page and other.public_id not in page
    running_rows = section(page, "board-running")
    assert f'data-task="{ours.pk}"' in running_rows
    assert ">504</span> / <span" in running_rows and ">1200<" in running_rows  # step / total
    assert "0.1235" in running_rows and "1 h 5 min" in running_rows  # loss, ETA
    assert 'value="42"' in running_rows and staff.team.public_id in running_rows
    # Django's app list is still there, below.
    assert (
        page.index('id="board"')
        < page.index('id="content-main"')
        < page.index(reverse("admin:models_app_model_changelist"))
    )
    assert "models_app/admin.css" in page and "style=" not in page


def test_a_superuser_sees_every_teams_trainings(client) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    running(TeamFactory(), name="Alpha run")
    running(TeamFactory(), name="Beta run", worker_id="gpu-box-2:gpu1:7:00")
    page = client.get(reverse(INDEX)).content.decode()
    assert "Alpha run" in page and "Beta run" in page and "every team" in page


def test_the_queue_is_shown_in_the_order_the_workers_claim_it(client) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    team = TeamFactory()
    pending = TrainingTask.Status.PENDING
    make_task(team, pending, name="q-normal-old", priority=1, age_minutes=30)
    make_task(team, pending, name="q-low-oldest", priority=0, age_minutes=60)
    make_task(team, pending, name="q-urgent-new", priority=3, age_minutes=1)
    make_task(team, pending, name="q-normal-new", priority=1, age_minutes=5)
    make_task(team, pending, name="q-high", priority=2, age_minutes=10)

    page = client.get(reverse(INDEX)).content.decode()
    shown = re.findall(r">(q-[a-z-]+)</a>", section(page, "board-queue"))
    assert shown == ["q-urgent-new", "q-high", "q-normal-old", "q-normal-new", "q-low-oldest"]
    assert re.findall(r'class="board-position">(\d+)<', page) == ["1", "2", "3", "4", "5"]
    assert ">Urgent<" in page and ">Low<" in page

    claimed = []
    while (task := training_task_claim_next(worker_id=WORKER)) is not None:
        claimed.append(task.model.name)
    assert claimed == shown  # the dashboard's order is the claim order


def test_a_staff_member_sees_where_their_tasks_stand_in_the_whole_queue(staff) -> None:
    other = TeamFactory()
    pending = TrainingTask.Status.PENDING
    make_task(other, pending, name="Their urgent", priority=3, age_minutes=2)
    make_task(staff.team, pending, name="Our normal", priority=1, age_minutes=20)
    make_task(other, pending, name="Their older normal", priority=1, age_minutes=40)
    make_task(staff.team, pending, name="Our low", priority=0, age_minutes=90)

    queue = section(staff.get(reverse(INDEX)).content.decode(), "board-queue")
    assert re.findall(r">(Our [a-z]+)</a>", queue) == ["Our normal", "Our low"]
    assert re.findall(r'class="board-position">(\d+)<', queue) == ["3", "4"]  # two of theirs go first
    assert "Their" not in queue


def test_failures_show_their_reason_and_message_and_a_retry_says_why(staff) -> None:
    failed(staff.team, name="Out of memory run", reason="out_of_memory", message="CUDA out of memory at step 12")
    failed(staff.team, name="Bad data run", reason="bad_input", message="image 3 is not a PNG")
    failed(staff.team, name="Plain failure", reason="", message="")
    make_task(
        staff.team,
        TrainingTask.Status.PENDING,
        name="Retried run",
        attempt_count=1,
        failure_reason="worker_lost",
    )
    page = staff.get(reverse(INDEX)).content.decode()
    failures = section(page, "board-failures")
    assert "Out of GPU memory" in failures and "CUDA out of memory at step 12" in failures
    assert "Bad dataset or configuration" in failures and 'title="image 3 is not a PNG"' in failures
    assert ">Failed<" in failures and "(no message)" in failures
    assert "retry: attempt 1 of 3 ended (Worker lost)" in section(page, "board-queue")
    assert ">3</strong> failed in the last 24 hours" in page


def test_each_worker_shows_what_it_holds_and_an_expired_lease_is_said_plainly(staff) -> None:
    running(staff.team, name="Held fine", worker_id="gpu-box-1:gpu0:4242:abcd1234", lease_seconds=240)
    running(staff.team, name="Held by a lost worker", worker_id="gpu-box-3:gpu2:777:deadbeef", lease_seconds=-130)
    workers = section(staff.get(reverse(INDEX)).content.decode(), "board-workers")
    fine, lost = re.findall(r"<tr data-worker.*?</tr>", workers, re.S)
    assert "gpu-box-1 · gpu0" in fine and "pid 4242" in fine and "Held fine" in fine
    assert "Lease expired" not in fine and "expires in" in fine
    assert "gpu-box-3 · gpu2" in lost and "Held by a lost worker" in lost and "board-lease-lost" in lost
    assert "Lease expired</strong>" in lost and "2 min ago: the worker stopped answering" in lost


def test_each_worker_says_what_it_trains_on(staff) -> None:
    """A worker on a CPU machine is shown on the CPU, a GPU worker with the GPUs it holds: no label claims a
    GPU that is not there."""
    now = timezone.now()
    WorkerMachine.objects.create(name="cpu-box", gpus=2, device_type="cpu", last_seen_at=now)
    WorkerMachine.objects.create(name="gpu-box", gpus=4, device_type="cuda", last_seen_at=now)
    running(staff.team, name="On the CPU", worker_id="cpu-box:w:1:aa", machine="cpu-box", devices=[0])
    running(staff.team, name="On two GPUs", worker_id="gpu-box:w:2:bb", machine="gpu-box", devices=[2, 3])
    workers = section(staff.get(reverse(INDEX)).content.decode(), "board-workers")
    assert "GPU workers" not in workers
    on_cpu, on_gpus = re.findall(r"<tr data-worker.*?</tr>", workers, re.S)
    assert re.search(r'data-field="devices">CPU<', on_cpu) and "GPU" not in on_cpu
    assert re.search(r'data-field="devices">GPUs 2, 3<', on_gpus)


def test_the_live_json_has_the_running_numbers_and_its_signature_follows_the_rows(staff) -> None:
    task = running(staff.team, name="Live run")
    preparing = running(
        staff.team,
        worker_id="gpu-box-2:gpu1:5:00",
        status=TrainingTask.Status.PREPROCESSING,
        preprocessing_stage="caching",
        started_at=timezone.now() + timedelta(seconds=1),
    )
    running(TeamFactory(), name="Not ours", worker_id="gpu-box-9:gpu9:9:99")
    state = staff.get(reverse(LIVE)).json()
    assert [row["id"] for row in state["running"]] == [str(task.pk), str(preparing.pk)]
    row = state["running"][0]
    assert (row["current_step"], row["total_steps"], row["percent"]) == (504, 1200, 42)
    assert (row["loss"], row["eta"], row["status"], row["stage"]) == ("0.1235", "1 h 5 min", "TRAINING", "")
    assert set(row) == {
        "id",
        "status",
        "stage",
        "percent",
        "current_step",
        "total_steps",
        "loss",
        "eta",
        "cancel_requested",
    }
    assert state["workers"][0]["name"] == "gpu-box-1 · gpu0" and state["workers"][0]["lease_expired"] is False
    assert (state["running"][1]["status"], state["running"][1]["stage"]) == ("PREPROCESSING", "caching")
    assert [worker["task"] for worker in state["workers"]] == [str(task.pk), str(preparing.pk)]
    # The page shows the same signature; new progress keeps it, a new row changes it (the page reloads).
    page = staff.get(reverse(INDEX)).content.decode()
    assert f'data-signature="{state["signature"]}"' in page
    TrainingTask.objects.filter(pk=task.pk).update(current_step=600, progress=50.0)
    moved = staff.get(reverse(LIVE)).json()
    assert moved["signature"] == state["signature"] and moved["running"][0]["current_step"] == 600
    make_task(staff.team, TrainingTask.Status.PENDING)
    assert staff.get(reverse(LIVE)).json()["signature"] != state["signature"]


def test_the_dashboard_needs_a_role_that_shows_trainings(staff) -> None:
    running(staff.team, name="Ours")
    Membership.objects.filter(user=staff.user).delete()
    from models_app.permissions import user_groups_sync

    user_groups_sync(staff.user)
    assert staff.get(reverse(LIVE)).status_code == 403
    page = staff.get(reverse(INDEX))
    assert page.status_code == 200 and 'id="board"' not in page.content.decode()


def _populate(team: Team, count: int) -> None:
    for index in range(count):
        running(team, worker_id=f"gpu-box-{index}:gpu{index}:{index}:00")
        make_task(team, TrainingTask.Status.PENDING, priority=index % 4, attempt_count=1, failure_reason="worker_lost")
        failed(team)


@pytest.mark.parametrize("page", [INDEX, LIVE])
@pytest.mark.parametrize("superuser", [False, True])
def test_the_dashboard_costs_the_same_queries_for_more_rows(client, page: str, superuser: bool) -> None:
    user = UserFactory(is_staff=True, is_superuser=superuser)
    team = TeamFactory()
    membership_set(team=team, user=user, role=Membership.Role.MEMBER)
    client.force_login(user)
    _populate(team, 1)
    client.get(reverse(page))
    with CaptureQueriesContext(connection) as few:
        assert client.get(reverse(page)).status_code == 200
    _populate(team, 4)
    with CaptureQueriesContext(connection) as many:
        response = client.get(reverse(page))
    assert response.status_code == 200
    assert len(many) == len(few)
    if page == LIVE:
        assert len(response.json()["running"]) == 5
