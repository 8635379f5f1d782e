"""django-q2's `qcluster`, stopping cleanly while a training runs.

django-q2 answers SIGTERM and SIGINT by waiting for every worker to finish its task, which for a
training means hours, so a stopped worker either hung or was killed and its attempt counted as lost.
This command runs the same cluster, and on those signals first sends the runner's SHUTDOWN_SIGNAL to
the cluster's processes: a worker that is training saves a snapshot at its next step and hands the task
back to the queue (training/reporting.py, TaskReporter.should_suspend), then the cluster stops as usual. Every other
process of the cluster ignores the signal, which it inherits as ignored from this one. django-q2 has no
hook for this, so the command subclasses its cluster.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, cast

import psutil
from django.conf import settings
from django.core.management.base import CommandError
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as DjangoQClusterCommand

from training.lease import SHUTDOWN_SIGNAL

# The processes of a distributed run (training/launch.py): torchrun and the engine's ranks.
DISTRIBUTED_COMMANDS = ("torch.distributed.run", "training.engine.rank")

logger = logging.getLogger(__name__)


class GracefulCluster(Cluster):
    def sig_handler(self, signum: int, frame: Any) -> None:
        suspend_trainings(os.getpid())
        super().sig_handler(signum, frame)


def suspend_trainings(cluster_pid: int) -> int:
    """Send SHUTDOWN_SIGNAL to every process under the cluster but a distributed run's torchrun and
    ranks (their worker asks rank 0 to suspend, which tells the others); returns how many were signalled."""
    signalled = 0
    for child in psutil.Process(cluster_pid).children(recursive=True):
        try:
            if is_rank_process(child):
                continue
            child.send_signal(SHUTDOWN_SIGNAL)
            signalled += 1
        except psutil.NoSuchProcess:
            continue
    logger.info("asked %d cluster process(es) to suspend their trainings", signalled)
    return signalled


def advertise_machine() -> None:
    """Register this machine's GPUs as soon as its training cluster starts, so that a start asking for
    that many is accepted before a worker first looks for work."""
    from django.db import connection

    from models_app.services.machines import machine_advertise
    from training.lease import worker_machine

    machine = worker_machine()
    machine_advertise(machine)
    connection.close()  # the cluster forks its workers next: none may inherit this connection
    logger.info("machine %s offers %d %s device(s) to trainings", machine.name, machine.gpus, machine.device_type)


def is_rank_process(process: psutil.Process) -> bool:
    command = " ".join(process.cmdline())
    return any(name in command for name in DISTRIBUTED_COMMANDS)


def configuration_problem() -> str | None:
    """Why this cluster could never serve a task, or None: a cluster name no web process queues work under (a
    cluster of another name starts, logs nothing wrong and waits forever: django-q2 reads its own Q_CLUSTER_NAME),
    a Redis broker or a database it cannot reach."""
    from django.db import connections

    name = os.environ.get("Q_CLUSTER_NAME") or settings.TRAINING_QUEUE
    alternatives = cast(dict[str, Any], settings.Q_CLUSTER.get("ALT_CLUSTERS") or {})
    clusters = [settings.TRAINING_QUEUE, *alternatives]
    if name not in clusters:
        return (
            f"Q_CLUSTER_NAME={name!r} names no cluster of this deployment: the web processes queue trainings and "
            f"generations on {settings.TRAINING_QUEUE!r} (Q_QUEUE_NAME) and housekeeping on "
            f"{settings.HOUSEKEEPING_QUEUE!r}; leave Q_CLUSTER_NAME unset for a training cluster"
        )
    if "redis" in settings.Q_CLUSTER:
        import redis

        url = str(settings.Q_CLUSTER["redis"])
        try:
            redis.Redis.from_url(url, socket_connect_timeout=5).ping()
        except redis.RedisError as exc:
            return f"the queue's Redis broker cannot be reached (REDIS_URL={url}, Q_BROKER=redis): {exc}"
    try:
        connections["default"].ensure_connection()
    except Exception as exc:  # any driver's error: the message names the setting
        return f"the database cannot be reached (DATABASE_URL): {exc}"
    finally:
        connections["default"].close()  # the cluster forks next: no process may inherit this connection
    return None


class Command(DjangoQClusterCommand):
    help = "Starts a django-q2 cluster whose trainings save a snapshot and re-queue when it is stopped."

    def handle(self, *args: Any, **options: Any) -> None:
        # django-q2's own handle(), with our cluster class.
        settings.SECRET_KEY  # noqa: B018 - signing needs it: fail here, not in a worker
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        problem = configuration_problem()
        if problem:
            raise CommandError(problem)
        signal.signal(SHUTDOWN_SIGNAL, signal.SIG_IGN)  # inherited by the sentinel, the workers, the monitor
        if os.environ.get("Q_CLUSTER_NAME", settings.TRAINING_QUEUE) == settings.TRAINING_QUEUE:
            advertise_machine()
        cluster = GracefulCluster()
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
