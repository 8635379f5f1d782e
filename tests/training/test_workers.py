"""Workers that lose nothing: real qcluster processes, killed, reaped, resumed; concurrent starts;
priority across two clusters; cancel; webhooks against real receivers."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from models_app.errors import ApplicationError, Conflict
from models_app.models import Asset, CreditEntry, Model, Team, TrainingCheckpoint, TrainingTask
from models_app.services.credits import credits_grant
from models_app.services.datasets import model_configure, training_image_add_asset
from models_app.services.training import training_cancel, training_start, training_task_set_priority
from models_app.services.worker_protocol import training_task_claim, training_tasks_reap
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import HANG_GUARD, run_queued, start_cluster, stop_cluster, wait_for
from training.runner import run_training_task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FAST = {"rank": 4, "learning_rate": 0.001, "batch_size": 2, "resolution": 64, "optimizer": "adamw"}


def task_of(model: Model) -> TrainingTask:
    return model.training_tasks.get()


def test_a_killed_worker_is_reaped_and_its_task_resumes_from_the_checkpoint_on_another(
    tiny_sd15: Path, settings
) -> None:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**FAST, "steps": 150, "save_every": 15, "max_step_saves_to_keep": 2})
    training_start(model=model)  # enqueues a start message on commit (this test commits)
    first = start_cluster(settings, "gpu0", TRAINING_LEASE_SECONDS="4")
    try:
        wait_for(lambda: task_of(model).current_step >= 35, timeout=HANG_GUARD, what="step 35")
    finally:
        stop_cluster(first, kill=True)  # SIGKILL: no clean-up, no goodbye
    killed = task_of(model)
    assert killed.status == TrainingTask.Status.TRAINING and killed.attempt_count == 1
    # The dead attempt's clock as it last wrote it (progress writes carry the running phase's time).
    lost_training = killed.attempt_history[0]["stage_seconds"]["training"]
    assert lost_training > 0 and killed.stage_seconds["training"] == lost_training
    # The user's checkpoints (a crash-safety snapshot, every 500 steps or 10 minutes, is not due in 150 steps).
    saved = set(TrainingCheckpoint.objects.filter(task=killed, snapshot=False).values_list("step", flat=True))
    assert max(saved) >= 30 and len(saved) <= 2
    # The next worker may be another machine: nothing of this one's disk is left.
    shutil.rmtree(Path(settings.TRAINING_WORK_DIR) / str(killed.pk))

    wait_for(lambda: task_of(model).lease_expires_at < django_settings_now(), timeout=10, what="the lease to expire")
    report = training_tasks_reap()
    assert report.requeued == [str(killed.pk)]
    requeued = task_of(model)
    assert requeued.status == TrainingTask.Status.PENDING and requeued.failure_reason == "worker_lost"
    assert Model.objects.get(pk=model.pk).status == Model.Status.QUEUED

    second = start_cluster(settings, "gpu1", TRAINING_LEASE_SECONDS="4")
    try:
        wait_for(lambda: task_of(model).status == TrainingTask.Status.COMPLETED, timeout=HANG_GUARD, what="completion")
    finally:
        stop_cluster(second)
    done = task_of(model)
    assert done.attempt_count == 2
    # Bookkeeping after the crash: the lost attempt's failure no longer describes a completed task, and the
    # time of both attempts is kept, each on its own and summed.
    assert done.failure_reason == ""
    first, last = done.attempt_history
    assert "outcome" not in first and ":gpu0:" in first["worker"]  # it died without a word
    assert last["outcome"] == "completed" and ":gpu1:" in last["worker"]
    assert done.stage_seconds["training"] == pytest.approx(
        first["stage_seconds"]["training"] + last["stage_seconds"]["training"], abs=0.01
    )
    resumed_at = max(saved)
    assert f"fetched the checkpoint at step {resumed_at} from storage" in done.logs
    assert f"resumed from the checkpoint at step {resumed_at}" in done.logs
    assert ":gpu1:" in done.worker_id
    weights = list((Path(settings.MEDIA_ROOT) / "training" / str(done.pk)).glob("pytorch_lora_weights*"))
    assert [w.name for w in weights] == ["pytorch_lora_weights.safetensors"]  # published once
    assert Model.objects.get(pk=model.pk).status == Model.Status.READY


def django_settings_now():
    from django.utils import timezone

    return timezone.now()


def test_a_task_whose_worker_keeps_vanishing_fails_after_max_attempts_and_is_refunded(tiny_sd15: Path) -> None:
    team = TeamFactory()
    credits_grant(team=team, amount=Decimal("5.00"))
    model = ModelFactory(team=team, parameters={"steps": 100, "resolution": 512})
    add_images(model, 12)
    task = training_start(model=model)
    assert Team.objects.get(pk=team.pk).credit_balance == Decimal("4.00")
    for attempt in range(1, 4):
        claimed = training_task_claim(task_id=str(task.pk), worker_id=f"ghost-{attempt}")
        assert claimed is not None and claimed.attempt_count == attempt
        TrainingTask.objects.filter(pk=task.pk).update(lease_expires_at=django_settings_now())
        report = training_tasks_reap()
        if attempt < 3:
            assert report.requeued == [str(task.pk)]
    assert report.failed == [str(task.pk)]
    task.refresh_from_db()
    assert task.status == TrainingTask.Status.FAILED and task.failure_reason == "worker_lost"
    assert task.error_message == "the worker ghost-3 stopped answering (gave up after 3 attempts)"
    assert Team.objects.get(pk=team.pk).credit_balance == Decimal("5.00")  # nothing was trained: all back
    assert list(CreditEntry.objects.filter(task=task).values_list("kind", flat=True).order_by("id")) == [
        "reserve",
        "refund",
    ]
    assert Model.objects.get(pk=model.pk).status == Model.Status.FAILED


def shared_assets(team: Team, count: int = 12) -> list[Asset]:
    seed_model = ModelFactory(team=team)
    add_images(seed_model, count)
    return [image.asset for image in seed_model.training_images.select_related("asset")]


def run_threads(count: int, work) -> list[object]:
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def runner(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except ApplicationError as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_GUARD)
    return results


def test_twenty_concurrent_starts_of_one_model_create_one_task(tiny_sd15: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    results = run_threads(20, lambda _: training_start(model=Model.objects.get(pk=model.pk)))
    started = [r for r in results if isinstance(r, TrainingTask)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(started) == 1 and len(refused) == 19
    assert TrainingTask.objects.filter(model=model).count() == 1


def test_fifty_concurrent_starts_respect_the_team_limit_and_the_credits(tiny_sd15: Path) -> None:
    team = TeamFactory(max_parallel_trainings=5)
    credits_grant(team=team, amount=Decimal("3.50"))  # 1.00 a training: enough for three
    assets = shared_assets(team)
    models = []
    for _ in range(50):
        model = ModelFactory(team=team, parameters={"steps": 100, "resolution": 512})
        for asset in assets:
            training_image_add_asset(model=model, asset=asset)
        models.append(model)
    results = run_threads(50, lambda index: training_start(model=Model.objects.get(pk=models[index].pk)))
    started = [r for r in results if isinstance(r, TrainingTask)]
    assert len(started) == 3
    assert {type(r).__name__ for r in results if not isinstance(r, TrainingTask)} <= {
        "InsufficientCredits",
        "LimitReached",
    }
    balance = Team.objects.get(pk=team.pk).credit_balance
    assert balance == Decimal("0.50") and balance >= 0
    assert TrainingTask.objects.filter(team=team).count() == 3


def test_two_clusters_run_ten_tasks_once_each_in_priority_order(tiny_sd15: Path, settings) -> None:
    team = TeamFactory()
    assets = shared_assets(team)
    priorities = [0, 3, 1, 2, 1, 3, 0, 2, 1, 1]
    tasks = []
    for priority in priorities:
        model = ModelFactory(team=team, parameters={**FAST, "steps": 2, "priority": priority})
        for asset in assets:
            training_image_add_asset(model=model, asset=asset)
        tasks.append(training_start(model=model))
    late = tasks[0]
    training_task_set_priority(task=late, priority=3)  # the first task is moved to the front
    late.refresh_from_db()
    assert late.priority_changed_at is not None

    # Two workers on a two-core machine: one thread each, or they fight over the cores.
    one_core = {"TRAINING_CPU_THREADS": "1", "OMP_NUM_THREADS": "1"}
    clusters = [start_cluster(settings, "gpu0", **one_core), start_cluster(settings, "gpu1", **one_core)]
    try:
        wait_for(
            lambda: TrainingTask.objects.filter(status=TrainingTask.Status.COMPLETED).count() == 10,
            timeout=HANG_GUARD,
            what="ten completed tasks",
        )
    finally:
        for cluster in clusters:
            stop_cluster(cluster)
    done = list(TrainingTask.objects.order_by("started_at"))
    assert all(task.attempt_count == 1 for task in done)  # each ran exactly once
    expected = sorted(done, key=lambda t: (-t.priority, t.created_at))
    assert [t.pk for t in done] == [t.pk for t in expected]
    assert {task.worker_id.split(":")[1] for task in done} == {"gpu0", "gpu1"}  # both clusters worked


def test_sigterm_to_a_training_cluster_snapshots_and_hands_the_task_to_the_next_worker(
    tiny_sd15: Path, settings
) -> None:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**FAST, "steps": 120})
    training_start(model=model)
    first = start_cluster(settings, "gpu0")
    try:
        seen = wait_for(lambda: task_of(model).current_step >= 10 and task_of(model).current_step, timeout=HANG_GUARD,
                        what="step 10")  # fmt: skip
        os.kill(first.pid, signal.SIGTERM)  # as systemd or docker would stop it: the main process only
        first.wait(timeout=HANG_GUARD)  # a ceiling against a hang; the grace period bounds the real wait
    finally:
        stop_cluster(first, kill=True)
    assert first.returncode == 0
    released = task_of(model)
    assert released.status == TrainingTask.Status.PENDING and released.attempt_count == 0
    assert released.worker_id == "" and released.lease_expires_at is None
    snapshot = TrainingCheckpoint.objects.get(task=released, snapshot=True)
    assert seen <= snapshot.step < 120 and snapshot.step == released.current_step
    assert f"re-queued to resume from the snapshot at step {snapshot.step}" in released.logs
    assert Model.objects.get(pk=model.pk).status == Model.Status.QUEUED

    second = start_cluster(settings, "gpu1")  # its start message was queued by the hand-over
    try:
        wait_for(lambda: task_of(model).status == TrainingTask.Status.COMPLETED, timeout=HANG_GUARD, what="completion")
    finally:
        stop_cluster(second)
    done = task_of(model)
    assert done.attempt_count == 1 and ":gpu1:" in done.worker_id and done.failure_reason == ""
    assert f"resumed from the checkpoint at step {snapshot.step} (snapshot-" in done.logs
    assert Model.objects.get(pk=model.pk).status == Model.Status.READY


def test_cancel_of_a_running_training_stops_it_within_seconds_and_keeps_its_checkpoints(tiny_sd15: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**FAST, "steps": 400, "save_every": 5})
    task = training_start(model=model)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: (outcome.append(run_training_task(str(task.pk))), connection.close()))
    worker.start()
    wait_for(lambda: task_of(model).current_step >= 12, timeout=HANG_GUARD, what="step 12")
    training_cancel(model=model)
    worker.join(timeout=HANG_GUARD)  # a ceiling against a hang: the runner reads the flag at its next step
    assert not worker.is_alive() and outcome == [TrainingTask.Status.CANCELLED]
    task.refresh_from_db()
    assert task.status == TrainingTask.Status.CANCELLED and task.current_step < 400
    assert TrainingCheckpoint.objects.filter(task=task, snapshot=False).exists()
    assert Model.objects.get(pk=model.pk).status == Model.Status.CANCELED


class Receiver:
    """A real HTTP server on loopback that records webhook requests; it can be made to hang."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.release = threading.Event()
        self.release.set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                receiver.release.wait(timeout=30)
                self.send_response(200)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_the_queue_heals_a_lost_start_message(tiny_sd15: Path) -> None:
    from django_q.models import OrmQ

    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**FAST, "steps": 2})
    task = training_start(model=model)
    OrmQ.objects.all().delete()  # the message is lost (a crashed web process, a flushed broker)
    assert training_tasks_reap().enqueued == 1
    assert run_queued() == [TrainingTask.Status.COMPLETED]
    assert TrainingTask.objects.get(pk=task.pk).status == TrainingTask.Status.COMPLETED


def test_priority_changes_only_while_queued(tiny_sd15: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    task = training_start(model=model)
    with pytest.raises(ApplicationError, match="priority must be 0"):
        training_task_set_priority(task=task, priority=7)
    training_task_claim(task_id=str(task.pk), worker_id="w")
    with pytest.raises(Conflict, match="only a queued task's priority can change"):
        training_task_set_priority(task=task, priority=2)
