"""Service benchmarks, on a throwaway PostgreSQL database and real processes:

- queue: time from the start call to the task leaving PENDING, with a real `qcluster` on the ORM broker; and,
  with two clusters (two machines), one busy with a long training, the time until the idle one claims it;
- api: requests per second and latency of model detail, model list and task list under concurrent
  clients, served by gunicorn; and the number of SQL queries each request makes at two list sizes;
- e2e: wall time from the start call to `ready` for a 15-image, 1000-step training of the tiny model,
  split into the phases the worker records (queue, preprocessing, caching, loading, training, export).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "platform_bench"


class Environment:
    """A PostgreSQL database and folders of its own, and the environment its processes share."""

    def __init__(self, scratch: Path, base_model: Path) -> None:
        server = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
        self.database_url = f"{server}/{BENCH_DATABASE}"
        self.server_url = server
        self.scratch = scratch
        self.base_model = base_model
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DJANGO_DEBUG": "false",
            "VAR_DIR": str(scratch / "var"),
            "MEDIA_ROOT": str(scratch / "media"),
            "TRAINING_WORK_DIR": str(scratch / "work"),
            "TRAINING_BASE_MODEL_ROOTS": str(base_model.parent),
            "TRAINING_DEFAULT_BASE_MODEL": str(base_model),
            "TRAINING_CPU_THREADS": "0",
            "CREDITS_PER_1000_STEPS": "0",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
        }

    def reset_database(self) -> None:
        import psycopg

        with psycopg.connect(f"{self.server_url}/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')

    def setup_django(self) -> None:
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)

    def manage(self, *args: str, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env={**self.env, **(extra_env or {})},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def cluster(environment: Environment, name: str = "") -> Iterator[subprocess.Popen]:
    """A running qcluster; `name`: a machine of its own (TRAINING_WORKER_NAME), as a second GPU box."""
    log = environment.scratch / "logs" / f"qcluster{'-' + name if name else ''}.log"
    process = environment.manage("qcluster", log=log, extra_env={"TRAINING_WORKER_NAME": name} if name else None)
    try:
        # Measure from a running cluster: its start (imports, forks) is not part of a pickup.
        def running() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"qcluster exited; see {log}")
            return "running." in log.read_text(encoding="utf-8", errors="replace")

        wait_until(running, 120, "the qcluster to start")
        time.sleep(1)  # its first poll
        yield process
    finally:
        stop(process)


def team_with_images(count: int, *, name: str) -> tuple[Any, Any]:
    """A team and a model of `count` generated training images, through the services the API uses."""
    from models_app.services.accounts import team_create
    from models_app.services.datasets import model_create, training_image_add
    from training.engine.testing.images import make_images

    team = team_create(name=name)
    model = model_create(team=team, name=f"{name} model", type="product")
    for image in make_images(count, trigger_word="zxq"):
        training_image_add(model=model, content=image.content, name=image.name, description=image.caption)
    return team, model


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def bench_queue(environment: Environment, starts: int) -> dict[str, Any]:
    """Start `starts` one-step trainings one after another; each pickup is measured with the cluster idle."""
    from django.db import transaction

    from models_app.models import TrainingTask
    from models_app.services.datasets import model_configure
    from models_app.services.training import training_start

    _team, model = team_with_images(12, name="queue")
    model_configure(model=model, parameters={"steps": 1, "rank": 1, "resolution": 64, "save_every": 1000})
    pickups = []
    with cluster(environment):
        for _ in range(starts):
            started = time.perf_counter()
            with transaction.atomic():
                task = training_start(model=model)
            query = TrainingTask.objects.filter(pk=task.pk)
            wait_until(lambda q=query: q.exclude(status="PENDING").exists(), 30, "the task to leave PENDING")
            pickups.append(time.perf_counter() - started)
            wait_until(
                lambda q=query: q.filter(status__in=["COMPLETED", "FAILED", "CANCELLED"]).exists(),
                120,
                "the one-step training to end",
            )
            model.refresh_from_db()
    return {
        "starts": starts,
        "p50_seconds": round(statistics.median(pickups), 3),
        "p95_seconds": round(percentile(pickups, 0.95), 3),
        "max_seconds": round(max(pickups), 3),
    }


def bench_queue_busy(environment: Environment, starts: int) -> dict[str, Any]:
    """Two training clusters (two machines), one busy with a long training: each start is measured until a worker
    claims it (the idle cluster's), then cancelled, so the idle cluster is idle again for the next."""
    from django.db import transaction

    from models_app.models import TrainingTask
    from models_app.services.datasets import model_configure
    from models_app.services.training import training_cancel, training_start

    _team, busy = team_with_images(12, name="busy")
    _team, model = team_with_images(12, name="pickup")
    long_run = {"steps": 100_000, "rank": 1, "resolution": 64, "save_every": 100_000}
    model_configure(model=busy, parameters=long_run)
    model_configure(model=model, parameters=long_run)
    pickups = []
    ended = ["COMPLETED", "FAILED", "CANCELLED"]
    with cluster(environment, "box-a"), cluster(environment, "box-b"):
        with transaction.atomic():
            first = training_start(model=busy)
        wait_until(lambda: TrainingTask.objects.filter(pk=first.pk, status="TRAINING").exists(), 300, "one busy box")
        try:
            for _ in range(starts):
                started = time.perf_counter()
                with transaction.atomic():
                    task = training_start(model=model)
                query = TrainingTask.objects.filter(pk=task.pk)
                wait_until(lambda q=query: q.exclude(worker_id="").exists(), 120, "a worker to claim the start")
                pickups.append(time.perf_counter() - started)
                training_cancel(model=model)
                wait_until(lambda q=query: q.filter(status__in=ended).exists(), 120, "the cancel")
                model.refresh_from_db()
        finally:
            training_cancel(model=busy)
            wait_until(lambda: TrainingTask.objects.filter(pk=first.pk, status__in=ended).exists(), 120, "the end")
    return {
        "starts": starts,
        "p50_seconds": round(statistics.median(pickups), 3),
        "p95_seconds": round(percentile(pickups, 0.95), 3),
        "max_seconds": round(max(pickups), 3),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def api_fixture(models: int) -> tuple[str, str]:
    """A team with `models` models and a finished task each; returns (its bearer key, its first model's id)."""
    from models_app.models import Model, TrainingTask
    from models_app.services.accounts import api_key_create, api_key_token, team_create
    from models_app.services.datasets import model_create

    team = team_create(name=f"api-{models}")
    api_key, secret = api_key_create(team=team, name="bench")
    ids = []
    for index in range(models):
        model = model_create(team=team, name=f"model {index}", type="product")
        task = TrainingTask.objects.create(
            team=team, model=model, trigger_word="zxq", status=TrainingTask.Status.COMPLETED, progress=100.0
        )
        Model.objects.filter(pk=model.pk).update(status=Model.Status.READY, latest_task=task)
        ids.append(model.public_id)
    return api_key_token(api_key, secret), ids[0]


def count_queries(key: str, path: str) -> int:
    """The queries of a request, the API key's own lookup included (a read served within
    API_KEY_CACHE_SECONDS of the key's last lookup in its process makes one fewer); measured on a
    second request, since a key's first use also records it (last_used_at)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings

    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_HOST="localhost")
    with override_settings(API_KEY_CACHE_SECONDS=0):
        client.get(path)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.content[:200]!r}")
    return len(queries)


def load(url: str, key: str, *, clients: int, seconds: float) -> dict[str, float]:
    """`clients` threads, each with its own keep-alive connection, requesting `url` for `seconds`."""
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop() -> None:
        nonlocal errors
        mine: list[float] = []
        failed = 0
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                response = client.get(url)
                mine.append(time.perf_counter() - began)
                failed += response.status_code != 200
        with lock:
            latencies.extend(mine)
            errors += failed

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return {
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "requests": len(latencies),
        "errors": errors,
    }


def cpu_seconds(*, session: int) -> dict[str, float]:
    """CPU seconds used so far by gunicorn (the processes of its session), PostgreSQL (every process named
    postgres) and this process (the load clients, while they run); from /proc, empty where there is none."""
    clock = os.sysconf("SC_CLK_TCK")
    used = {"server": 0.0, "postgres": 0.0}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else []:
        try:
            name, fields = (entry / "stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue  # not a process, or it has just ended
        values = fields.split()
        seconds = (int(values[11]) + int(values[12])) / clock  # utime, stime
        if int(values[3]) == session:
            used["server"] += seconds
        elif name.endswith("(postgres"):
            used["postgres"] += seconds
    return {**used, "clients": time.process_time()} if Path("/proc/self/stat").exists() else {}


def load_measured(url: str, key: str, *, clients: int, seconds: float, session: int) -> dict[str, Any]:
    """`load`, with the CPU each side spent per request: where a throughput short of a target goes."""
    before, began = cpu_seconds(session=session), time.perf_counter()
    figures: dict[str, Any] = dict(load(url, key, clients=clients, seconds=seconds))
    after, elapsed = cpu_seconds(session=session), time.perf_counter() - began
    if before and figures["requests"]:
        spent = {side: after[side] - before[side] for side in before}
        figures["cpu_ms_per_request"] = {side: round(1000 * v / figures["requests"], 2) for side, v in spent.items()}
        figures["cores_busy"] = round(sum(spent.values()) / elapsed, 2)
    return figures


def bench_api(environment: Environment, *, clients: int, seconds: float, workers: int) -> dict[str, Any]:
    small_key, small_model = api_fixture(5)
    key, model_id = api_fixture(50)
    endpoints = {
        "model detail": "/v1/models/{model}",
        "model list": "/v1/models?limit=50",
        "task list": "/api/v1/training/?limit=50",
    }
    # Constant queries: the same count for a team of 5 models and one of 50.
    queries = {
        name: {
            "5 rows": count_queries(small_key, path.format(model=small_model)),
            "50 rows": count_queries(key, path.format(model=model_id)),
        }
        for name, path in endpoints.items()
    }
    port = free_port()
    # As the README's production command runs it (sync workers); BENCH_GUNICORN_ARGS compares other
    # server settings, e.g. "--workers 4 --worker-class gthread --threads 4".
    server_options = os.environ.get("BENCH_GUNICORN_ARGS", "").split() or ["--workers", str(workers)]
    log = environment.scratch / "logs" / "gunicorn.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
            *server_options, "--log-level", "warning",
        ],
        env={**environment.env, "DJANGO_SETTINGS_MODULE": "config.settings.production",
             "DJANGO_SECRET_KEY": "bench-only-secret-key-not-for-use-anywhere-else-0123456789"},
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, cwd=str(ROOT),
    )  # fmt: skip
    try:
        import httpx

        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/api/schema/"), 60, "gunicorn to answer")
        results = {}
        for name, path in endpoints.items():
            url = f"http://127.0.0.1:{port}{path.format(model=model_id)}"
            httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30).raise_for_status()
            load(url, key, clients=clients, seconds=1.0)  # warm every worker's connection and caches
            figures = load_measured(url, key, clients=clients, seconds=seconds, session=server.pid)
            results[name] = {**figures, "queries": queries[name]}
    finally:
        stop(server)
    return {"clients": clients, "gunicorn_workers": workers, "seconds_per_endpoint": seconds, "endpoints": results}


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def bench_e2e(environment: Environment, *, images: int, steps: int) -> dict[str, Any]:
    """One training through the real cluster, start call to ready, split by the worker's phase clocks."""
    from django.db import transaction

    from models_app.models import Model, TrainingTask
    from models_app.services.datasets import model_configure
    from models_app.services.training import training_start

    _team, model = team_with_images(images, name="e2e")
    model_configure(model=model, parameters={"steps": steps, "save_every": 100_000, "sample_every": 100_000})
    with cluster(environment):
        began = time.perf_counter()
        with transaction.atomic():
            task = training_start(model=model)
        wait_until(
            lambda: Model.objects.filter(pk=model.pk, status__in=["ready", "failed"]).exists(),
            3600,
            "the model to be ready",
        )
        wall = time.perf_counter() - began
    task = TrainingTask.objects.get(pk=task.pk)
    if task.status != TrainingTask.Status.COMPLETED:
        raise RuntimeError(f"the end-to-end training failed: {task.error_message}")
    order = ["queue", "downloading", "preprocessing", "caching", "loading", "training", "exporting"]
    phases = {name: round(task.stage_seconds[name], 2) for name in order if name in task.stage_seconds}
    return {
        "images": images,
        "steps": steps,
        "wall_seconds": round(wall, 2),
        "phases_seconds": phases,
        "steps_per_second": round(steps / max(1e-9, task.stage_seconds.get("training", 0.0)), 2),
    }


def run(scratch: Path, base_model: Path, *, sections: set[str], quick: bool) -> dict[str, Any]:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    environment = Environment(scratch, base_model)
    environment.reset_database()
    environment.setup_django()
    results: dict[str, Any] = {}
    try:
        if "queue" in sections:
            results["queue"] = bench_queue(environment, starts=5 if quick else 20)
            results["queue_busy"] = bench_queue_busy(environment, starts=5 if quick else 20)
        if "api" in sections:
            results["api"] = bench_api(environment, clients=16, seconds=2.0 if quick else 10.0, workers=4)
        if "e2e" in sections:
            results["e2e"] = bench_e2e(environment, images=15, steps=50 if quick else 1000)
    finally:
        from django.db import connections

        connections.close_all()
        shutil.rmtree(scratch / "work", ignore_errors=True)
    return results
