"""The Ray execution backend: for teams that already run a Ray cluster, each claimed attempt becomes a
Ray job (TRAINING_EXECUTION=ray) instead of a training in the django-q2 worker.

The worker that claims the task submits a job through the Ray Jobs REST API (so the worker needs no Ray
package; only the cluster runs Ray), under an idempotent id: `training-<task>-attempt-<n>` (a repeated
submit of the same attempt finds the job already there). The job's entrypoint runs this project's
`manage.py run_training_attempt` on a Ray node with `gpus` GPUs (`entrypoint_num_gpus`): the same
runner as a local worker (lease, progress, checkpoints, publishing), under the claiming worker's id.
The worker follows the job until it ends: it keeps the lease while Ray queues the job, forwards a cancel
(Ray stops the job when the run has not stopped by itself within TRAINING_RAY_CANCEL_GRACE_SECONDS, or
at once while the job still waits for resources), and fails the attempt (re-queued while attempts remain)
when the job fails or is stopped without having finished the task.

The Ray nodes need the project at TRAINING_RAY_PROJECT_DIR, its interpreter at TRAINING_RAY_PYTHON, and
the same database, storage and broker settings as any worker machine; the variables named in
TRAINING_RAY_ENV_VARS are passed from the worker's environment to the job (Ray shows them on its
dashboard: keep secrets in the nodes' own environment instead where that matters).
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from typing import Any

import httpx
from django.conf import settings

from models_app.models import TrainingTask
from models_app.services.worker_protocol import training_task_cancelled, training_task_fail, training_task_release
from training.lease import Heartbeat, shutdown_requested

logger = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
REQUEST_TRIES = 5  # 2 + 4 + 8 + 16 s of back-off: a head restart, not a cluster gone for good


class RayJobError(RuntimeError):
    """The Ray Jobs API refused a request or could not be reached."""


class RayJobs:
    """The Ray Jobs REST API of one cluster (its dashboard address)."""

    def __init__(self, address: str) -> None:
        self.client = httpx.Client(base_url=address.rstrip("/"), timeout=30.0)

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call, tried again over a short outage of the head (a restart): REQUEST_TRIES with back-off."""
        for attempt in range(REQUEST_TRIES):
            try:
                return self.client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                if attempt == REQUEST_TRIES - 1:
                    raise RayJobError(f"the Ray cluster at {self.client.base_url} cannot be reached: {exc}") from exc
                time.sleep(min(30.0, 2.0 * 2**attempt))
        raise AssertionError("unreachable")

    def submit(
        self, submission_id: str, *, entrypoint: str, env_vars: dict[str, str], gpus: int, metadata: dict[str, str]
    ) -> bool:
        """Create the job; False when a job of this id exists already (an earlier submit of the attempt)."""
        body = {
            "entrypoint": entrypoint,
            "submission_id": submission_id,
            "runtime_env": {"env_vars": env_vars},
            "entrypoint_num_gpus": gpus,
            "entrypoint_num_cpus": 1,
            "metadata": metadata,
        }
        response = self.request("POST", "/api/jobs/", json=body)
        if response.status_code == 200:
            return True
        if "already exists" in response.text:
            return False
        raise RayJobError(f"Ray refused job {submission_id}: {response.status_code} {response.text[:500]}")

    def info(self, submission_id: str) -> dict[str, Any]:
        """The job's details: status (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED), message, ..."""
        response = self.request("GET", f"/api/jobs/{submission_id}")
        if response.status_code != 200:
            raise RayJobError(f"Ray job {submission_id}: {response.status_code} {response.text[:500]}")
        return dict(response.json())

    def stop(self, submission_id: str) -> bool:
        response = self.request("POST", f"/api/jobs/{submission_id}/stop")
        return response.status_code == 200 and bool(response.json().get("stopped"))


def submission_id(task: TrainingTask) -> str:
    return f"training-{task.pk}-attempt-{task.attempt_count}"


def job_entrypoint(task: TrainingTask, worker_id: str) -> str:
    project, python = settings.TRAINING_RAY_PROJECT_DIR, settings.TRAINING_RAY_PYTHON
    command = [python, "manage.py", "run_training_attempt", str(task.pk), "--worker-id", worker_id]
    return f"cd {shlex.quote(str(project))} && " + " ".join(shlex.quote(part) for part in command)


def job_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in settings.TRAINING_RAY_ENV_VARS if name in os.environ}


def run_on_ray(task: TrainingTask, worker_id: str) -> str:
    """Hand the claimed attempt to Ray and follow it to its end; returns the task's final status (or
    "handed to ray" when this worker stops first: the job runs on and finishes the task itself)."""
    jobs = RayJobs(settings.TRAINING_RAY_ADDRESS)
    job = submission_id(task)
    try:
        try:
            created = jobs.submit(
                job,
                entrypoint=job_entrypoint(task, worker_id),
                env_vars=job_environment(),
                gpus=task.gpus if settings.TRAINING_DEVICE != "cpu" else 0,
                metadata={"task": str(task.pk), "attempt": str(task.attempt_count), "worker": worker_id},
            )
        except RayJobError as exc:
            # The cluster is unreachable: the task goes back to the queue without using up an attempt.
            logger.error("task %s: %s; handed back to the queue", task.pk, exc)
            return training_task_release(task_id=task.pk, worker_id=worker_id, step=0) or "not-claimed"
        logger.info("task %s: Ray job %s %s", task.pk, job, "submitted" if created else "found (submitted before)")
        with Heartbeat(task.pk, worker_id) as heartbeat:
            try:
                status = follow(jobs, job, task, heartbeat)
            except RayJobError as exc:
                jobs_stop_quietly(jobs, job)
                return training_task_fail(
                    task_id=task.pk, worker_id=worker_id, message=str(exc), reason="internal", retriable=True
                )
        if status["status"] == "PENDING" and shutdown_requested.is_set():
            # Still waiting in Ray's queue while this worker stops: nobody would keep its lease.
            jobs_stop_quietly(jobs, job)
            return training_task_release(task_id=task.pk, worker_id=worker_id, step=0) or "not-claimed"
        return settle(task, worker_id, job, status)
    finally:
        jobs.close()


def jobs_stop_quietly(jobs: RayJobs, job: str) -> None:
    try:
        jobs.stop(job)
    except RayJobError:
        logger.warning("Ray job %s could not be stopped", job)


def follow(jobs: RayJobs, job: str, task: TrainingTask, heartbeat: Heartbeat) -> dict[str, Any]:
    """Poll the job until it ends, forwarding a cancel; the job's details at its end (or as last seen
    when this worker shuts down or loses the lease)."""
    cancel_seen: float | None = None
    while True:
        info = jobs.info(job)
        if info["status"] in TERMINAL or shutdown_requested.is_set():
            return info
        if heartbeat.lost:
            jobs.stop(job)  # the task is no longer this worker's: its job must not write on
            return jobs.info(job)
        if TrainingTask.objects.filter(pk=task.pk, cancel_requested_at__isnull=False).exists():
            cancel_seen = cancel_seen or time.monotonic()
            # A queued job never sees the cancel; a running one stops by itself at its next step.
            waited = time.monotonic() - cancel_seen
            if info["status"] == "PENDING" or waited >= settings.TRAINING_RAY_CANCEL_GRACE_SECONDS:
                jobs.stop(job)
        time.sleep(settings.TRAINING_RAY_POLL_SECONDS)


def settle(task: TrainingTask, worker_id: str, job: str, info: dict[str, Any]) -> str:
    """The task after its job: what the job's runner published, or, where the job ended without
    finishing the task (failed, stopped, killed), a cancel honoured or the attempt failed and re-queued."""
    status = info["status"]
    if status not in TERMINAL:
        return "handed to ray"  # this worker is stopping; the job holds the lease and finishes the task
    held = TrainingTask.objects.filter(
        pk=task.pk, worker_id=worker_id, status__in=TrainingTask.RUNNING_STATUSES
    ).exists()
    if not held:
        return str(TrainingTask.objects.values_list("status", flat=True).get(pk=task.pk))
    if TrainingTask.objects.filter(pk=task.pk, cancel_requested_at__isnull=False).exists():
        training_task_cancelled(task_id=task.pk, worker_id=worker_id, fields={})
        return TrainingTask.Status.CANCELLED
    message = f"the Ray job {job} ended {status}: {(info.get('message') or '').strip()[:500]}"
    return training_task_fail(
        task_id=task.pk, worker_id=worker_id, message=message, reason="worker_lost", retriable=True
    )
