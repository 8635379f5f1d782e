"""The Ray execution backend against a real local Ray cluster (`ray start --head`, Jobs API on a free
port): a claimed attempt becomes a Ray job that trains and publishes the task; its id makes a repeated
submit harmless; a cancel reaches the job; a job that dies re-queues the task."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from models_app.models import TrainingTask
from models_app.services.datasets import model_configure
from models_app.services.training import training_cancel, training_start
from tests.factories import ModelFactory, add_images
from tests.helpers import HANG_GUARD, free_port, postgres_pass_only, wait_for, worker_environment
from training.ray_jobs import RayJobs, submission_id
from training.runner import run_training_task

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    postgres_pass_only("a Ray cluster and its jobs on the production database"),
]
RAY = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[2] / ".venv")) / "bin" / "ray"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster of this machine, in its own process group, gone after the module."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    dashboard = free_port()
    ports = [free_port() for _ in range(5)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    command = [
        str(RAY), "start", "--head", "--block", "--port=0", "--num-cpus=2", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        "--object-store-memory=83886080", f"--temp-dir={temp}", "--disable-usage-stats",
        f"--ray-client-server-port={ports[0]}", f"--dashboard-agent-listen-port={ports[1]}",
        f"--dashboard-agent-grpc-port={ports[2]}", f"--metrics-export-port={ports[3]}",
        f"--runtime-env-agent-port={ports[4]}",
    ]  # fmt: skip
    head = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"

    def answering() -> bool:
        try:
            return httpx.get(f"{address}/api/version", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answering, timeout=HANG_GUARD, what="the Ray head's Jobs API")
        yield address
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the whole cluster: it shares the head's process group
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def on_ray(ray_cluster: str, settings, monkeypatch) -> str:
    settings.TRAINING_EXECUTION, settings.TRAINING_RAY_ADDRESS = "ray", ray_cluster
    settings.TRAINING_RAY_POLL_SECONDS, settings.TRAINING_RAY_CANCEL_GRACE_SECONDS = 0.5, 5.0
    settings.TRAINING_DEVICE = "cpu"
    # What the job needs to reach this test's database and files, passed through TRAINING_RAY_ENV_VARS.
    for name, value in worker_environment(settings, DJANGO_SETTINGS_MODULE="config.settings.test").items():
        if name in settings.TRAINING_RAY_ENV_VARS:
            monkeypatch.setenv(name, value)
    return ray_cluster


def started(fast_training: dict, **parameters: object) -> TrainingTask:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, **parameters})
    return training_start(model=model)


def test_a_task_runs_as_a_ray_job_and_a_repeated_submit_finds_it(tiny_sd15: Path, fast_training: dict, on_ray) -> None:
    task = started(fast_training, steps=4)
    assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
    task.refresh_from_db()
    assert task.weights and task.current_step == 4 and task.machine == f"ray {on_ray}"
    jobs = RayJobs(on_ray)
    job = jobs.info(submission_id(task))
    assert job["status"] == "SUCCEEDED" and job["metadata"]["task"] == str(task.pk)
    # The attempt's id is the job's: submitting it again creates nothing.
    again = jobs.submit(submission_id(task), entrypoint="true", env_vars={}, gpus=0, metadata={})
    assert again is False
    jobs.close()


def test_a_cancel_is_forwarded_to_the_ray_job(tiny_sd15: Path, fast_training: dict, on_ray) -> None:
    task = started(fast_training, steps=5000)

    def cancel_once_training() -> None:
        wait_for(
            lambda: TrainingTask.objects.filter(pk=task.pk, current_step__gte=2).exists(),
            timeout=HANG_GUARD,
            what="the job's second step",
        )
        training_cancel(model=task.model)

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    assert run_training_task(str(task.pk)) == TrainingTask.Status.CANCELLED
    canceller.join(HANG_GUARD)
    task.refresh_from_db()
    jobs = RayJobs(on_ray)
    job = submission_id(task)
    assert jobs.info(job)["status"] in ("SUCCEEDED", "STOPPED")  # ended, by itself or by Ray
    jobs.close()
    assert task.status == TrainingTask.Status.CANCELLED and task.current_step < 5000


def test_a_job_that_dies_requeues_the_task(tiny_sd15: Path, fast_training: dict, on_ray) -> None:
    task = started(fast_training, steps=5000)
    jobs = RayJobs(on_ray)

    def stop_the_job_behind_the_runners_back() -> None:
        wait_for(
            lambda: TrainingTask.objects.filter(pk=task.pk, current_step__gte=2).exists(),
            timeout=HANG_GUARD,
            what="the job's second step",
        )
        jobs.stop(f"training-{task.pk}-attempt-1")  # as an operator or a node failure would

    stopper = threading.Thread(target=stop_the_job_behind_the_runners_back)
    stopper.start()
    outcome = run_training_task(str(task.pk))
    stopper.join(HANG_GUARD)
    task.refresh_from_db()
    assert outcome == TrainingTask.Status.PENDING == task.status and task.failure_reason == "worker_lost"
    assert f"the Ray job training-{task.pk}-attempt-1 ended STOPPED" in task.logs + (task.error_message or "")
    jobs.close()
