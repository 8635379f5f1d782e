"""A free worker claims a start while another cluster is busy (issue 38): django-q2's clusters take queue
messages ahead of their workers, so a start's single message could sit in a busy cluster for the length of a
training while another cluster was idle. Each start now sends one message per training machine; the busy
cluster holds at most one, the idle one gets another at once. The bench (`bench/run.py --only queue`) measures
the time; this test asserts the event: the claim comes while the other training is still running."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.utils import timezone

from models_app.models import TrainingTask, WorkerMachine
from models_app.services.datasets import model_configure
from models_app.services.training import training_cancel, training_start
from tests.factories import ModelFactory, add_images
from tests.helpers import HANG_GUARD, start_cluster, stop_cluster, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="two clusters on one queue (the PG pass)"
    ),
]

LONG = {"rank": 1, "learning_rate": 0.001, "batch_size": 1, "resolution": 64, "optimizer": "adamw", "steps": 100_000,
        "save_every": 100_000}  # fmt: skip
ENDED = (TrainingTask.Status.COMPLETED, TrainingTask.Status.FAILED, TrainingTask.Status.CANCELLED)


def test_a_start_is_claimed_by_the_idle_cluster_while_the_other_trains(tiny_sd15: Path, settings) -> None:
    busy_model, model = ModelFactory(), ModelFactory()
    for each in (busy_model, model):
        add_images(each, 12)
        model_configure(model=each, parameters=LONG)
    busy = training_start(model=busy_model)
    clusters = [start_cluster(settings, name, TRAINING_CPU_THREADS="1") for name in ("box-a", "box-b")]
    try:
        wait_for(
            lambda: TrainingTask.objects.filter(pk=busy.pk, status=TrainingTask.Status.TRAINING).exists(),
            timeout=HANG_GUARD,
            what="one cluster to be training",
        )
        assert WorkerMachine.objects.count() == 2  # each cluster registered its machine at start
        busy_worker = TrainingTask.objects.get(pk=busy.pk).worker_id
        for _ in range(3):  # each try: the busy cluster may take a message first
            task = training_start(model=model)
            wait_for(
                lambda t=task: TrainingTask.objects.filter(pk=t.pk).exclude(worker_id="").exists(),
                timeout=HANG_GUARD,
                what="a worker to claim the start",
            )
            claimed = TrainingTask.objects.get(pk=task.pk)
            assert TrainingTask.objects.get(pk=busy.pk).status == TrainingTask.Status.TRAINING  # still running
            assert claimed.worker_id.split(":")[1] != busy_worker.split(":")[1]  # by the other machine (box-a, box-b)
            training_cancel(model=model)
            wait_for(
                lambda t=task: TrainingTask.objects.filter(pk=t.pk, status__in=ENDED).exists(),
                timeout=HANG_GUARD,
                what="the cancel",
            )
            model.refresh_from_db()
    finally:
        TrainingTask.objects.filter(status__in=TrainingTask.ACTIVE_STATUSES).update(cancel_requested_at=timezone.now())
        for process in clusters:
            stop_cluster(process)
