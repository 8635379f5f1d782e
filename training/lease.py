"""A worker's hold on its task: its identity, the lease it renews from a thread, and the clean stop.

The lease is renewed by `Heartbeat` (training and generation jobs alike) through the worker
protocol; the cluster's shutdown signal turns into `shutdown_requested`, which a running training
reads between steps to save a snapshot and hand its task back.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection

from models_app.models import TrainingCheckpoint
from models_app.services.machines import MachineSpec
from models_app.services.worker_protocol import training_task_heartbeat, training_task_release

logger = logging.getLogger(__name__)

# Sent by our `qcluster` command to its worker processes when the cluster is asked to stop: a running
# training saves a snapshot and hands its task back. Every process of the cluster ignores it otherwise.
SHUTDOWN_SIGNAL = signal.SIGUSR1
shutdown_requested = threading.Event()


def worker_machine() -> MachineSpec:
    """This worker's machine as the scheduler sees it (models_app/services/machines.py); with Ray
    execution, the Ray cluster (which places each job on a node itself)."""
    if settings.TRAINING_EXECUTION == "ray":
        return MachineSpec(
            name=f"ray {settings.TRAINING_RAY_ADDRESS}",
            gpus=max(1, int(settings.TRAINING_GPUS)),
            device_type=configured_device_type(),
            holds_devices=False,
        )
    name = settings.TRAINING_MACHINE_NAME or socket.gethostname()
    if not settings.TRAINING_MACHINE_NAME and os.environ.get("TRAINING_WORKER_NAME"):
        name = f"{name}:{os.environ['TRAINING_WORKER_NAME']}"  # a qcluster per GPU: one machine each
    return MachineSpec(name=name, gpus=max(1, int(settings.TRAINING_GPUS)), device_type=configured_device_type())


def configured_device_type() -> str:
    """ "cuda" or "cpu": TRAINING_DEVICE's kind, or when it is unset what the runner will pick (CUDA when
    torch sees a GPU, else the CPU), so that a machine without a GPU never advertises one."""
    configured = settings.TRAINING_DEVICE
    if configured:
        return "cpu" if configured.startswith("cpu") else "cuda"
    if settings.TRAINING_EXECUTION == "ray":
        return "cuda"  # the Ray nodes' GPUs, not this process's
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_identity() -> str:
    """host:label:pid:random. Every training cluster shares the queue (Q_CLUSTER_NAME); the label tells
    them apart (TRAINING_WORKER_NAME, e.g. one per GPU)."""
    label = os.environ.get("TRAINING_WORKER_NAME") or settings.Q_CLUSTER.get("name", "worker")
    return f"{socket.gethostname()}:{label}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat:
    """Renews the task's lease from a thread while the runner works, also through long silent phases
    (loading a 24 GB model, caching); notices when the task was taken from this worker.

    A database error (SQLite busy, a PostgreSQL restart) is retried with back-off. If the lease cannot
    be renewed for two thirds of its length, the heartbeat gives up and marks it lost: the runner then
    stops rather than train on a lease the reaper may already have handed to another worker. While the
    cluster shuts down it also bounds the hand-over: past TRAINING_SHUTDOWN_GRACE_SECONDS it releases
    the task itself and ends the process, wherever the run is.
    """

    def __init__(self, task_id: Any, worker_id: str) -> None:  # a task's UUID; GenerationLease: a job's id
        self.task_id = task_id
        self.worker_id = worker_id
        self.lost = False
        self.lost_reason = ""
        self.errors = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"lease-{task_id}", daemon=True)

    def run(self) -> None:
        lease = float(settings.TRAINING_LEASE_SECONDS)
        interval = max(1.0, lease / 3)
        give_up_after = 2 * lease / 3
        last_renewed = time.monotonic()
        next_renewal, backoff = last_renewed + interval, 0.5
        shutdown_since: float | None = None
        try:
            while not self.stopped.wait(min(1.0, interval)):
                now = time.monotonic()
                if shutdown_requested.is_set():
                    shutdown_since = shutdown_since or now
                    if now - shutdown_since >= settings.TRAINING_SHUTDOWN_GRACE_SECONDS:
                        self.release_and_exit()
                if now < next_renewal:
                    continue
                try:
                    renewed = self.renew()
                except DatabaseError as exc:
                    self.errors += 1
                    connection.close()  # the next try opens a fresh connection
                    if time.monotonic() - last_renewed >= give_up_after:
                        self.mark_lost(f"the lease could not be renewed for {give_up_after:.0f} s ({exc})")
                        return
                    logger.warning("task %s: lease not renewed (%s); retrying in %.1f s", self.task_id, exc, backoff)
                    next_renewal, backoff = time.monotonic() + backoff, min(backoff * 2, interval / 2)
                    continue
                if not renewed:
                    self.mark_lost(f"no longer held by {self.worker_id}")
                    return
                last_renewed = time.monotonic()
                next_renewal, backoff = last_renewed + interval, 0.5
        finally:
            connection.close()

    def renew(self) -> bool:
        return training_task_heartbeat(task_id=self.task_id, worker_id=self.worker_id)

    def release(self) -> None:
        step = TrainingCheckpoint.objects.filter(task_id=self.task_id).order_by("-step").values_list("step", flat=True)
        training_task_release(task_id=self.task_id, worker_id=self.worker_id, step=step.first() or 0)

    def mark_lost(self, reason: str) -> None:
        logger.error("training task %s: %s; the run stops", self.task_id, reason)
        self.lost_reason = reason
        self.lost = True

    def release_and_exit(self) -> None:
        logger.warning(
            "%s did not stop within %s s of the shutdown; handing it back",
            self.task_id,
            settings.TRAINING_SHUTDOWN_GRACE_SECONDS,
        )
        self.release()
        connection.close()
        os._exit(0)  # the run may be deep inside a library call: nothing else can stop it now

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


def suspend_on_shutdown_signal() -> None:
    """In a worker process: turn the cluster's SHUTDOWN_SIGNAL into a request to suspend the training."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(SHUTDOWN_SIGNAL, lambda signum, frame: shutdown_requested.set())
