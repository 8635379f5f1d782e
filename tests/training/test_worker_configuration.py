"""A worker that could never serve a task refuses to start and says why, naming the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.helpers import worker_environment

pytestmark = pytest.mark.django_db(transaction=True)


def qcluster(settings, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(Path(django_settings.BASE_DIR) / "manage.py"), "qcluster"],
        env=worker_environment(settings, **environment),
        capture_output=True,
        text=True,
        timeout=300,  # a guard against a hang: a refused start ends at once
    )


def test_a_cluster_name_no_web_process_queues_under_is_refused_at_start(settings) -> None:
    """django-q2 reads Q_CLUSTER_NAME itself: a cluster under another name would start and wait forever."""
    result = qcluster(settings, Q_CLUSTER_NAME="trainings")
    assert result.returncode != 0
    assert "Q_CLUSTER_NAME='trainings' names no cluster of this deployment" in result.stderr
    assert "'training' (Q_QUEUE_NAME)" in result.stderr and "'housekeeping'" in result.stderr


def test_an_unreachable_broker_or_database_is_refused_at_start(settings) -> None:
    redis = qcluster(settings, Q_BROKER="redis", REDIS_URL="redis://127.0.0.1:9/0")
    assert redis.returncode != 0
    assert "the queue's Redis broker cannot be reached (REDIS_URL=redis://127.0.0.1:9/0" in redis.stderr
    database = qcluster(settings, DATABASE_URL="postgres://nobody@127.0.0.1:9/none")
    assert database.returncode != 0
    assert "the database cannot be reached (DATABASE_URL)" in database.stderr


@pytest.mark.parametrize("configured", [None, "cpu", "cuda:1"])
def test_a_worker_advertises_the_devices_it_will_really_train_on(settings, configured: str | None) -> None:
    """With TRAINING_DEVICE unset the runner trains on CUDA only when torch sees a GPU; the machine the worker
    advertises (and the dashboard and the log show) says the same, never a GPU a CPU machine does not have."""
    import torch

    from training.lease import worker_machine

    settings.TRAINING_DEVICE = configured
    settings.TRAINING_EXECUTION = "local"
    expected = {None: "cuda" if torch.cuda.is_available() else "cpu", "cpu": "cpu", "cuda:1": "cuda"}[configured]
    assert worker_machine().device_type == expected
