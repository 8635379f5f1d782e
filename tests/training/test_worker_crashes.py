"""Workers, round two (PostgreSQL, real qcluster and gunicorn processes, no mocks of our code): a cancel
survives the death of the worker it was sent to; a start message lost (or held by a killed cluster)
heals; interleaved start/cancel/delete never deadlock; a delete racing a caption edit never resurrects
the image; housekeeping runs while every training worker is busy; webhook retries are django-q2 tasks.

These scenarios are about PostgreSQL's row locks and a production deployment, so they run in the
PostgreSQL pass only (SQLite serialises every write and has no row locks to order).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from models_app.models import CreditEntry, Model, TrainingImage, TrainingTask, WebhookDelivery
from models_app.services.credits import credits_grant
from models_app.services.datasets import model_configure
from models_app.services.queue import queue_waiting
from models_app.services.training import training_start
from models_app.services.webhooks import SIGNATURE_HEADER, sign
from models_app.services.worker_protocol import (
    START_MESSAGE,
    training_task_claim,
    training_task_enqueue,
    training_tasks_reap,
)
from tests.factories import ModelFactory, TeamFactory, add_images, api_token
from tests.helpers import (
    HANG_GUARD,
    restore_schedules,
    start_cluster,
    start_housekeeping,
    start_web_server,
    stop_cluster,
    wait_for,
)
from tests.training.test_workers import Receiver
from training.runner import run_training_task

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="PostgreSQL's row locks (the PG pass)"
    ),
]

FAST = {"rank": 4, "learning_rate": 0.001, "batch_size": 2, "resolution": 64, "optimizer": "adamw"}


def task_of(model: Model) -> TrainingTask:
    return model.training_tasks.order_by("-created_at").first()


def expire_lease(task: TrainingTask) -> None:
    wait_for(
        lambda: TrainingTask.objects.get(pk=task.pk).lease_expires_at < timezone.now(),
        timeout=HANG_GUARD,
        what="the dead worker's lease to expire",
    )


# 1. A cancel is durable ------------------------------------------------------------------------------


def test_a_cancel_sent_to_a_frozen_worker_that_then_dies_ends_the_task_cancelled_and_refunded(
    tiny_sd15: Path, settings, client
) -> None:
    team = TeamFactory()
    credits_grant(team=team, amount=Decimal("100.00"))
    model = ModelFactory(team=team)
    add_images(model, 12)
    model_configure(model=model, parameters={**FAST, "steps": 600, "save_every": 20})
    token = api_token(team)
    task = training_start(model=model)
    first = start_cluster(settings, "gpu0", TRAINING_LEASE_SECONDS="4")
    second = None
    try:
        wait_for(lambda: task_of(model).current_step >= 25, timeout=HANG_GUARD, what="step 25")
        os.killpg(first.pid, signal.SIGSTOP)  # frozen: it can no longer see the flag
        answer = client.post(
            f"/v1/models/{model.public_id}/train/action",
            {"action": "cancel"},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        assert answer.status_code == 200 and answer.json()["result"] == "Training cancel requested"
        stop_cluster(first, kill=True)
        second = start_cluster(settings, "gpu1", TRAINING_LEASE_SECONDS="4")  # an idle worker, ready to claim
        expire_lease(task)
        report = training_tasks_reap()
        assert report.cancelled == [str(task.pk)] and report.requeued == []
        done = TrainingTask.objects.get(pk=task.pk)
        assert done.status == TrainingTask.Status.CANCELLED and done.cancel_requested_at is not None
        assert done.attempt_count == 1 and ":gpu0:" in done.worker_id  # never resumed elsewhere
        assert "cancelled as requested" in done.logs
        assert Model.objects.get(pk=model.pk).status == Model.Status.CANCELED
        # Charged only for the steps the dead worker recorded; the rest refunded.
        reserve = CreditEntry.objects.get(task=task, kind=CreditEntry.Kind.RESERVE)
        refund = CreditEntry.objects.get(task=task, kind=CreditEntry.Kind.REFUND)
        unrun = Decimal(600 - done.current_step) / 600
        assert refund.amount == (-reserve.amount * unrun).quantize(Decimal("0.01")) and refund.amount > 0
        assert refund.note == f"{done.current_step} of 600 steps done"
    finally:
        stop_cluster(first, kill=True)
        if second is not None:
            stop_cluster(second)
    assert TrainingTask.objects.get(pk=task.pk).status == TrainingTask.Status.CANCELLED  # and it stayed so


def test_a_claim_never_clears_a_cancel_request(tiny_sd15: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    task = training_start(model=model)
    # However a pending task came to carry a request (an older release wrote one), it is never run.
    TrainingTask.objects.filter(pk=task.pk).update(cancel_requested_at=timezone.now())
    assert training_task_claim(task_id=str(task.pk), worker_id="w") is None
    task.refresh_from_db()
    assert task.status == TrainingTask.Status.CANCELLED and task.attempt_count == 0


# 2. Start messages heal ------------------------------------------------------------------------------


def test_a_lost_start_message_heals_although_a_killed_cluster_still_holds_queue_rows(tiny_sd15: Path, settings) -> None:
    long_model, short_model = ModelFactory(), ModelFactory()
    for model in (long_model, short_model):
        add_images(model, 12)
    model_configure(model=long_model, parameters={**FAST, "steps": 2000})
    model_configure(model=short_model, parameters={**FAST, "steps": 3})
    long_task = training_start(model=long_model)
    first = start_cluster(settings, "gpu0", TRAINING_LEASE_SECONDS="4")
    second = None
    try:
        wait_for(lambda: task_of(long_model).current_step >= 1, timeout=HANG_GUARD, what="the long run to train")
        training_task_enqueue()  # a spare message (a top-up's): the busy cluster's pusher takes it ahead
        wait_for(
            lambda: OrmQ.objects.filter(key=settings.TRAINING_QUEUE, lock__gt=timezone.now()).count() >= 2,
            timeout=HANG_GUARD,
            what="the busy cluster to hold two queue rows",
        )
        stop_cluster(first, kill=True)  # its rows stay locked for django-q2's `retry` (hours)
        short_task = training_start(model=short_model)
        OrmQ.objects.filter(key=settings.TRAINING_QUEUE, lock__lte=timezone.now()).delete()  # its message is lost
        assert queue_waiting(START_MESSAGE, queue=settings.TRAINING_QUEUE) == 0
        expire_lease(long_task)

        report = training_tasks_reap()
        assert report.requeued == [str(long_task.pk)]
        assert report.enqueued == 1  # the locked rows of the dead cluster are not counted as waiting
        assert queue_waiting(START_MESSAGE, queue=settings.TRAINING_QUEUE) == 2

        second = start_cluster(settings, "gpu1", Q_WORKERS="2", TRAINING_CPU_THREADS="1")
        wait_for(
            lambda: TrainingTask.objects.get(pk=short_task.pk).status == TrainingTask.Status.COMPLETED,
            timeout=HANG_GUARD,
            what="the task whose message was lost to complete",
        )
    finally:
        stop_cluster(first, kill=True)
        TrainingTask.objects.filter(pk=long_task.pk).update(cancel_requested_at=timezone.now())
        if second is not None:
            stop_cluster(second)


# 3 and 4. Concurrent requests through gunicorn -------------------------------------------------------


def deadlocks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def test_interleaved_starts_cancels_and_deletes_never_deadlock(tiny_sd15: Path, settings, tmp_path: Path) -> None:
    team = TeamFactory()
    credits_grant(team=team, amount=Decimal("1000.00"))  # credits: start and cancel both write the team row
    models = [ModelFactory(team=team) for _ in range(3)]
    for model in models:
        add_images(model, 12)
        model_configure(model=model, parameters={**FAST, "steps": 50})
    token = api_token(team)
    log = tmp_path / "gunicorn.log"
    server, url = start_web_server(settings, log)
    before = deadlocks()
    statuses: list[tuple[str, int]] = []
    try:
        headers = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: _answers(f"{url}/v1/models", headers), timeout=HANG_GUARD, what=f"gunicorn ({log})")

        def call(kind: str, model: Model) -> tuple[str, int]:
            with httpx.Client(base_url=url, headers=headers, timeout=HANG_GUARD) as http:
                if kind == "start":
                    return kind, http.get(f"/v1/models/{model.public_id}/train").status_code
                if kind == "cancel":
                    return kind, http.post(
                        f"/v1/models/{model.public_id}/train/action", json={"action": "cancel"}
                    ).status_code
                return kind, http.delete(f"/v1/models/{model.public_id}").status_code

        for round_number in range(5):
            calls = [("start" if index % 2 == 0 else "cancel", models[index % 3]) for index in range(40)]
            if round_number == 4:
                calls.insert(20, ("delete", models[2]))  # a delete lands among starts and cancels of its model
            with ThreadPoolExecutor(max_workers=16) as pool:
                statuses.extend(pool.map(lambda pair: call(*pair), calls))
    finally:
        stop_cluster(server)
    server_errors = [entry for entry in statuses if entry[1] >= 500]
    assert not server_errors, f"{len(server_errors)} answers of 5xx; see {log}"
    assert {code for _, code in statuses} <= {200, 404, 409}
    assert "deadlock detected" not in log.read_text(errors="replace")
    time.sleep(1.5)  # not a measure: the server's statistics reach the view within PGSTAT's 1 s flush interval
    assert deadlocks() == before
    # Every model ends consistent: at most one active task, the status its newest task implies.
    for model in models:
        assert model.training_tasks.filter(status__in=TrainingTask.ACTIVE_STATUSES).count() <= 1


def _answers(url: str, headers: dict[str, str]) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_delete_racing_a_caption_edit_never_resurrects_the_image(tiny_sd15: Path, settings, tmp_path: Path) -> None:
    team = TeamFactory()
    model = ModelFactory(team=team)
    add_images(model, 12)
    token = api_token(team)
    log = tmp_path / "gunicorn.log"
    server, url = start_web_server(settings, log)
    outcomes: list[tuple[int, int, bool]] = []
    try:
        headers = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: _answers(f"{url}/v1/models", headers), timeout=HANG_GUARD, what=f"gunicorn ({log})")
        images = list(TrainingImage.objects.filter(model=model).select_related("asset")[:8])
        for image in images:
            path = f"/v1/models/{model.public_id}/training-images/{image.asset.public_id}"
            barrier = threading.Barrier(2)

            def delete(path: str = path, barrier: threading.Barrier = barrier) -> int:
                with httpx.Client(base_url=url, headers=headers, timeout=HANG_GUARD) as http:
                    barrier.wait()
                    return http.delete(path).status_code

            def caption(path: str = path, barrier: threading.Barrier = barrier) -> int:
                with httpx.Client(base_url=url, headers=headers, timeout=HANG_GUARD) as http:
                    barrier.wait()
                    return http.put(path, data={"description": "a new caption"}).status_code

            with ThreadPoolExecutor(max_workers=2) as pool:
                deleted, captioned = pool.submit(delete), pool.submit(caption)
                outcome = (deleted.result(), captioned.result())
            outcomes.append((*outcome, TrainingImage.objects.filter(pk=image.pk).exists()))
    finally:
        stop_cluster(server)
    for delete_status, caption_status, still_there in outcomes:
        assert delete_status == 200 and caption_status in (200, 404), (
            outcomes,
            log.read_text(errors="replace")[-2000:],
        )
        assert not still_there, outcomes  # a 200 to the DELETE means the image is gone
    assert TrainingImage.objects.filter(model=model).count() == 12 - len(outcomes)


# 6 and 8. Housekeeping that cannot be starved; webhook retries as django-q2 tasks ----------------------


def test_housekeeping_reaps_and_delivers_while_the_only_training_worker_is_busy(tiny_sd15: Path, settings) -> None:
    settings.IMAGE_URL_ALLOW_PRIVATE_HOSTS = True
    receiver = Receiver()
    busy_model, ghost_model = ModelFactory(), ModelFactory()
    for model in (busy_model, ghost_model):
        add_images(model, 12)
    model_configure(model=busy_model, parameters={**FAST, "steps": 5000, "webhook_url": receiver.url})
    environment = {"IMAGE_URL_ALLOW_PRIVATE_HOSTS": "1", "WEBHOOK_PROGRESS_SECONDS": "3600"}
    busy = training_start(model=busy_model)
    trainer = start_cluster(settings, "gpu0", **environment)  # Q_WORKERS=1: one training at a time
    housekeeping = None
    try:
        wait_for(lambda: task_of(busy_model).current_step >= 1, timeout=HANG_GUARD, what="the busy worker to train")
        # Elsewhere a worker died holding a task: its lease has expired, and nobody but a reaper notices.
        ghost = training_start(model=ghost_model)
        OrmQ.objects.filter(key=settings.TRAINING_QUEUE, lock__lte=timezone.now()).delete()
        assert training_task_claim(task_id=str(ghost.pk), worker_id="ghost:gpu9:1:dead") is not None
        TrainingTask.objects.filter(pk=ghost.pk).update(lease_expires_at=timezone.now())
        restore_schedules()
        reaper = Schedule.objects.get(func="training.tasks.reap_stale_tasks")
        assert reaper.cluster == settings.HOUSEKEEPING_QUEUE  # no training cluster runs it
        assert Schedule.objects.get(func="training.housekeeping.sweep_orphans").cluster == settings.HOUSEKEEPING_QUEUE
        Schedule.objects.filter(pk=reaper.pk).update(next_run=timezone.now())

        housekeeping = start_housekeeping(settings, **environment)
        ghost_back = wait_for(
            lambda: TrainingTask.objects.filter(pk=ghost.pk, status=TrainingTask.Status.PENDING).first(),
            timeout=HANG_GUARD,
            what="the housekeeping cluster's reaper to re-queue the ghost's task",
        )
        assert ghost_back.failure_reason == "worker_lost" and "ghost:gpu9" in ghost_back.logs
        delivered = wait_for(
            lambda: (
                set(
                    WebhookDelivery.objects.filter(task=busy, status=WebhookDelivery.Status.DELIVERED).values_list(
                        "event", flat=True
                    )
                )
                >= {"queued", "started"}
            ),
            timeout=HANG_GUARD,
            what="the busy task's webhooks to be delivered",
        )
        assert delivered
        assert task_of(busy_model).status == TrainingTask.Status.TRAINING  # the training worker never stopped
        assert ":gpu0:" in task_of(busy_model).worker_id
    finally:
        TrainingTask.objects.filter(pk=busy.pk).update(cancel_requested_at=timezone.now())
        stop_cluster(trainer)
        if housekeeping is not None:
            stop_cluster(housekeeping)
        receiver.close()


def test_webhooks_are_sent_by_housekeeping_tasks_and_a_hanging_receiver_is_retried_on_schedule(
    tiny_sd15: Path, settings
) -> None:
    settings.IMAGE_URL_ALLOW_PRIVATE_HOSTS = True
    settings.WEBHOOK_PROGRESS_SECONDS = 0.0
    receiver = Receiver()
    receiver.release.clear()  # every request hangs past the timeout
    housekeeping = None
    try:
        model = ModelFactory()
        add_images(model, 12)
        model_configure(model=model, parameters={**FAST, "steps": 20, "save_every": 10, "webhook_url": receiver.url})
        task = training_start(model=model)
        # The training runs to its end without a single attempt: it only records events and queues them.
        assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
        events = list(WebhookDelivery.objects.filter(task=task).order_by("id").values_list("event", flat=True))
        assert events[:2] == ["queued", "started"] and events[-1] == "completed"
        assert "checkpoint" in events and "progress" in events
        assert not WebhookDelivery.objects.filter(task=task, attempts__gt=0).exists()
        assert OrmQ.objects.filter(key=settings.HOUSEKEEPING_QUEUE).count() == len(events)

        housekeeping = start_housekeeping(settings, IMAGE_URL_ALLOW_PRIVATE_HOSTS="1", WEBHOOK_TIMEOUT_SECONDS="2")
        first = WebhookDelivery.objects.filter(task=task).order_by("id").first()
        failed = wait_for(
            lambda: WebhookDelivery.objects.filter(pk=first.pk, attempts__gte=1).first(),
            timeout=HANG_GUARD,
            what="a first attempt",
        )
        assert failed.status == WebhookDelivery.Status.PENDING and "ReadTimeout" in failed.last_error
        assert Schedule.objects.filter(name=f"webhook-{first.pk}", cluster=settings.HOUSEKEEPING_QUEUE).exists()

        receiver.release.set()  # the receiver recovers: the scheduled retries go through
        wait_for(
            lambda: not WebhookDelivery.objects.filter(task=task).exclude(status=WebhookDelivery.Status.DELIVERED),
            timeout=HANG_GUARD,
            what="every event to be delivered by its retry",
        )
        retried = WebhookDelivery.objects.get(pk=first.pk)
        assert retried.attempts >= 2 and retried.response_status == 200
        bodies = [body for _, body in receiver.requests]
        assert all(
            headers[SIGNATURE_HEADER] == sign(task.team.webhook_secret, body) for headers, body in receiver.requests
        )
        assert {json.loads(body)["task_id"] for body in bodies} == {str(task.pk)}
        assert not Schedule.objects.filter(name__startswith="webhook-").exists()  # each ran once, and went
    finally:
        if housekeeping is not None:
            stop_cluster(housekeeping)
        receiver.close()
