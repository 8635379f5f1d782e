"""The lease a running training holds: renewed through database trouble, given up before it can be
stolen, and handed back (not lost) when its worker shuts down."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from models_app.models import Model, TrainingTask
from models_app.services.datasets import model_configure
from models_app.services.training import training_cancel, training_start
from models_app.services.worker_protocol import LeaseLost, training_task_claim, training_task_release
from tests.factories import ModelFactory, add_images
from tests.helpers import wait_for
from training.lease import Heartbeat
from training.reporting import TaskReporter

pytestmark = pytest.mark.django_db(transaction=True)

WORKER = "host:gpu0:1:abcd"


def claimed_task(tiny_sd15: Path) -> TrainingTask:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={"base_model_path": str(tiny_sd15), "steps": 100})
    task = training_start(model=model)
    claimed = training_task_claim(task_id=str(task.pk), worker_id=WORKER)
    assert claimed is not None
    return claimed


@contextlib.contextmanager
def sqlite_writes_refused() -> Iterator[None]:
    """Another process's exclusive transaction on the test database: every write fails as 'database is
    locked' once the writer's busy timeout (made short here) runs out."""
    options = connection.settings_dict.setdefault("OPTIONS", {})
    timeout = options.get("timeout")
    options["timeout"] = 0.3  # connections opened from now on (the heartbeat's) wait this long
    holder = sqlite3.connect(connection.settings_dict["NAME"], timeout=5, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        options["timeout"] = timeout


@pytest.fixture
def short_lease(settings) -> None:
    settings.TRAINING_LEASE_SECONDS = 12  # renewed every 4 s; given up after 8 s without a renewal


def lease_of(task: TrainingTask):
    return TrainingTask.objects.values_list("lease_expires_at", flat=True).get(pk=task.pk)


@pytest.mark.usefixtures("short_lease")
def test_the_heartbeat_survives_a_locked_sqlite_database_and_renews_once_it_is_free(tiny_sd15: Path) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock; PostgreSQL has its own test below")
    task = claimed_task(tiny_sd15)
    connection.close()  # the heartbeat thread opens its own connection with the short busy timeout
    with Heartbeat(task.pk, WORKER) as heartbeat:
        with sqlite_writes_refused():
            wait_for(lambda: heartbeat.errors >= 1, timeout=60, what="a refused renewal")
        before = lease_of(task)
        wait_for(lambda: lease_of(task) > before, timeout=60, what="a renewal after the lock")
        assert not heartbeat.lost
    assert heartbeat.errors >= 1


@pytest.mark.usefixtures("short_lease")
def test_a_heartbeat_that_cannot_renew_gives_up_and_the_run_stops(tiny_sd15: Path) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock")
    task = claimed_task(tiny_sd15)
    reporter = TaskReporter(task, WORKER)
    connection.close()
    with Heartbeat(task.pk, WORKER) as heartbeat:
        reporter.heartbeat = heartbeat
        with sqlite_writes_refused():
            wait_for(lambda: heartbeat.lost, timeout=120, what="the heartbeat to give up")
    assert "could not be renewed" in heartbeat.lost_reason and "locked" in heartbeat.lost_reason
    with pytest.raises(LeaseLost):  # the engine's next step check ends the run: it writes nothing more
        reporter.should_cancel()


@pytest.mark.usefixtures("short_lease")
def test_the_heartbeat_reconnects_after_postgresql_drops_its_connection(tiny_sd15: Path) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's connections")
    task = claimed_task(tiny_sd15)
    with Heartbeat(task.pk, WORKER) as heartbeat:
        wait_for(lambda: heartbeat.thread.is_alive(), timeout=10, what="the heartbeat")
        before = lease_of(task)
        wait_for(lambda: lease_of(task) > before, timeout=60, what="a first renewal")
        # A database restart, as seen by the worker: its connection is terminated under it.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        wait_for(lambda: heartbeat.errors >= 1, timeout=60, what="the failed renewal")
        before = lease_of(task)
        wait_for(lambda: lease_of(task) > before, timeout=60, what="a renewal on a new connection")
        assert not heartbeat.lost


def test_a_released_task_goes_back_to_the_queue_without_counting_the_attempt(tiny_sd15: Path) -> None:
    task = claimed_task(tiny_sd15)
    assert task.attempt_count == 1
    assert training_task_release(task_id=task.pk, worker_id=WORKER, step=40) == TrainingTask.Status.PENDING
    task.refresh_from_db()
    assert task.status == TrainingTask.Status.PENDING and task.attempt_count == 0
    assert task.worker_id == "" and task.lease_expires_at is None and task.failure_reason == ""
    assert "re-queued to resume from the snapshot at step 40" in task.logs
    assert Model.objects.get(uuid=task.model_id).status == Model.Status.QUEUED
    # Another worker no longer owns it: a second release by the old worker changes nothing.
    assert training_task_release(task_id=task.pk, worker_id=WORKER, step=40) == ""


def test_a_release_with_a_pending_cancel_ends_the_task_cancelled(tiny_sd15: Path) -> None:
    task = claimed_task(tiny_sd15)
    training_cancel(model=task.model)
    assert training_task_release(task_id=task.pk, worker_id=WORKER, step=10) == TrainingTask.Status.CANCELLED
    task.refresh_from_db()
    assert task.status == TrainingTask.Status.CANCELLED
    assert Model.objects.get(uuid=task.model_id).status == Model.Status.CANCELED
