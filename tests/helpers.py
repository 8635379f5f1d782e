"""Small helpers the tests share."""

from __future__ import annotations

from pathlib import Path

from rest_framework.test import APIClient

from models_app.models import Team
from tests.factories import api_token


def api_client_for(team: Team) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token(team)}")
    return client


def media_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file()] if Path(root).exists() else []


def run_queued(queue: str | None = None) -> list[object]:
    """Run every message on one of django-q2's ORM queues (the training queue unless named), as that
    queue's worker would, and remove it. Returns the results."""
    from django.conf import settings
    from django.utils.module_loading import import_string
    from django_q.models import OrmQ

    results = []
    for message in OrmQ.objects.filter(key=queue or settings.TRAINING_QUEUE).order_by("id"):
        package = message.task
        message.delete()
        results.append(import_string(package["func"])(*package["args"], **package.get("kwargs", {})))
    return results


def png(size: tuple[int, int] = (96, 96), colour: str = "red", fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def database_url() -> str:
    """The URL of the database this test runs on, for a worker process to reach the same data."""
    from django.db import connection

    config = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{config['NAME']}"
    credentials = config["USER"] + (f":{config['PASSWORD']}" if config["PASSWORD"] else "")
    return f"postgres://{credentials}@{config['HOST'] or 'localhost'}:{config['PORT'] or 5432}/{config['NAME']}"


def worker_environment(settings, **extra: str) -> dict[str, str]:
    """The environment a real qcluster process needs to work on this test's database and files."""
    import os

    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "TRAINING_WORK_DIR": str(settings.TRAINING_WORK_DIR),
        "VAR_DIR": str(settings.VAR_DIR),
        "FILE_UPLOAD_TEMP_DIR": str(settings.FILE_UPLOAD_TEMP_DIR),
        "TRAINING_BASE_MODEL_ROOTS": ",".join(str(p) for p in settings.TRAINING_BASE_MODEL_ROOTS),
        **extra,
    }


def start_cluster(settings, name: str, **extra: str):
    """A real `manage.py qcluster` process in its own process group (so a test can kill it whole)."""
    import subprocess
    import sys
    from pathlib import Path

    from django.conf import settings as django_settings

    log = open(Path(settings.VAR_DIR).parent / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, str(Path(django_settings.BASE_DIR) / "manage.py"), "qcluster"],
        env=worker_environment(settings, TRAINING_WORKER_NAME=name, **extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_housekeeping(settings, **extra: str):
    """A real housekeeping cluster (reaper, webhook deliveries, sweeps), as production runs it."""
    from django.conf import settings as django_settings

    return start_cluster(settings, "housekeeping", Q_CLUSTER_NAME=django_settings.HOUSEKEEPING_QUEUE, **extra)


def restore_schedules() -> None:
    """The django-q2 schedules the migrations create (reaper, sweep), as in a deployment: a transactional
    test starts from flushed tables, without them."""
    from importlib import import_module

    from django.apps import apps

    import_module("models_app.migrations.0005_reaper_schedule").create_schedule(apps, None)
    import_module("models_app.migrations.0011_housekeeping_cluster_and_attempts").housekeeping_schedules(apps, None)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_web_server(settings, log, *, threads: int = 8, workers: int = 2, **extra: str):
    """gunicorn serving this test's database and files on a free loopback port, in its own process group.
    Returns (process, base URL); stop it with stop_cluster."""
    import subprocess
    import sys

    from django.conf import settings as django_settings

    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads)]
    output = open(log, "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        command,
        cwd=django_settings.BASE_DIR,
        env=worker_environment(settings, DJANGO_SETTINGS_MODULE="config.settings.test", **extra),
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


def stop_cluster(process, *, kill: bool = False) -> None:
    import contextlib
    import os
    import signal
    import subprocess

    if process.poll() is None:
        if kill:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            os.kill(process.pid, signal.SIGTERM)  # as an operator would: the cluster stops its workers
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # Nothing of the cluster outlives the test, even a worker it failed to stop.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# The ceiling of every wait on an event in the tests (a step reached, a task completed, a server up). It only
# guards against a hang: a wait returns as soon as its event happens, so a slow machine takes longer and
# still passes. Never a measure of speed (those live in bench/).
HANG_GUARD = 900.0


def wait_for(predicate, *, timeout: float, interval: float = 0.3, what: str = "condition"):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def postgres_pass_only(why: str):
    """Run a test once per `make test`, in the PostgreSQL pass (as the browser tests do): for tests of
    several processes whose outcome does not depend on the database, run against the production one."""
    import os

    import pytest

    return pytest.mark.skipif(
        not os.environ.get("DATABASE_URL"),
        reason=f"runs in the PostgreSQL pass ({why}; set DATABASE_URL to run it alone)",
    )
