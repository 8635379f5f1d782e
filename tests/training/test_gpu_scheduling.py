"""Trainings on several GPUs through the worker: the machine's devices shared out by the claim, a task
on two ranks (torchrun, gloo CPU processes) reporting through rank 0, a rank's death handled like a
lost worker, and the start refusing what no machine can run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from models_app.models import TrainingTask, WorkerMachine
from models_app.services.datasets import model_configure
from models_app.services.machines import MachineSpec, machine_claim, machine_free_devices
from models_app.services.training import training_start
from models_app.services.worker_protocol import training_task_fail
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for, postgres_pass_only
from tests.training.test_distributed import rank_pid
from training.runner import run_training_task

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("tiny_sd15")]  # the default base model
TWO_CPUS = MachineSpec(name="box", gpus=2, device_type="cpu")
HANG_CEILING = 300.0  # seconds: only guards against a hang


def started(gpus: int = 1, **parameters: object) -> TrainingTask:
    model = ModelFactory()
    add_images(model, 12)
    return training_start(model=model, overrides={"gpus": gpus, **parameters})


def test_a_task_holds_as_many_devices_as_it_asks_and_waits_until_they_are_free(settings) -> None:
    settings.TRAINING_GPUS = 2
    wide, narrow, other = started(gpus=2, batch_size=2), started(), started()
    first = machine_claim(worker_id="box:w1", machine=TWO_CPUS)
    assert first is not None and first.pk == wide.pk and (first.machine, first.devices) == ("box", [0, 1])
    assert machine_free_devices(TWO_CPUS) == []
    assert machine_claim(worker_id="box:w2", machine=TWO_CPUS) is None  # nothing fits while it runs
    # Another machine's worker takes the next task meanwhile.
    elsewhere = machine_claim(worker_id="big:w1", machine=MachineSpec(name="big", gpus=8, device_type="cuda"))
    assert elsewhere is not None and elsewhere.pk == narrow.pk and elsewhere.devices == [0]
    # The wide task ends (here: fails for good): its devices are free again.
    training_task_fail(task_id=wide.pk, worker_id="box:w1", message="stopped", reason="internal")
    again = machine_claim(worker_id="box:w2", machine=TWO_CPUS)
    assert again is not None and again.pk == other.pk and again.devices == [0]
    assert machine_free_devices(TWO_CPUS) == [1]
    assert set(WorkerMachine.objects.values_list("name", "gpus")) == {("box", 2), ("big", 8)}


def test_two_one_gpu_tasks_never_share_a_device(settings) -> None:
    settings.TRAINING_GPUS = 2
    tasks = [started(), started(), started()]
    claims = [machine_claim(worker_id=f"box:w{n}", machine=TWO_CPUS) for n in range(3)]
    held = [claim.devices for claim in claims if claim is not None]
    assert sorted(held) == [[0], [1]] and claims[2] is None
    assert {claim.pk for claim in claims if claim} <= {task.pk for task in tasks}


def test_the_start_refuses_more_gpus_than_any_machine_has_and_an_uneven_batch(settings) -> None:
    settings.TRAINING_GPUS = 1  # no machine registered yet: this machine's own count
    model = ModelFactory()
    add_images(model, 12)
    client = api_client_for(model.team)
    url = f"/v1/models/{model.public_id}/train"
    refused = client.put(url, {"parameters": {"gpus": 2, "batch_size": 2}}, format="json")
    assert refused.status_code == 400
    assert refused.json()["detail"] == "gpus 2: no worker machine has that many GPUs (the largest has 1)"
    WorkerMachine.objects.create(name="big", gpus=8, device_type="cuda", last_seen_at="2026-01-01T00:00Z")
    uneven = client.put(url, {"parameters": {"gpus": 4, "batch_size": 2, "gradient_accumulation": 3}}, format="json")
    assert uneven.status_code == 400
    assert "batch_size (2) or gradient_accumulation (3) must be a multiple of 4" in uneven.json()["detail"]
    assert not TrainingTask.objects.filter(model=model).exists()
    swapped = client.put(url, {"parameters": {"gpus": 2, "batch_size": 2, "swap_blocks": 4}}, format="json")
    assert swapped.status_code == 400 and "swap_blocks does not combine with gpus above 1" in swapped.json()["detail"]
    too_many = client.put(url, {"parameters": {"gpus": 9}}, format="json")
    assert too_many.status_code == 400 and "the largest has 8" in too_many.json()["detail"]
    accepted = client.put(url, {"parameters": {"gpus": 8, "batch_size": 1, "gradient_accumulation": 8}}, format="json")
    assert accepted.status_code == 200, accepted.json()
    progress = client.get(f"/v1/models/{model.public_id}").json()["result"]["trainingProgress"]
    assert (progress["gpus"], progress["machine"], progress["devices"]) == (8, "", [])


def on_two_cpu_devices(settings, fast_training: dict, **parameters: object) -> TrainingTask:
    """A 2-GPU task started on a worker machine "box" offering 2 CPU processes as its devices."""
    settings.TRAINING_GPUS, settings.TRAINING_DEVICE, settings.TRAINING_MACHINE_NAME = 2, "cpu", "box"
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, "gpus": 2, **parameters})
    return training_start(model=model)


@pytest.mark.slow
@postgres_pass_only("real ranks under the runner")
def test_a_two_gpu_task_trains_on_two_ranks_and_reports_through_rank_0(
    tiny_sd15: Path, fast_training: dict, settings
) -> None:
    task = on_two_cpu_devices(settings, fast_training, steps=6, save_every=3)
    assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
    task.refresh_from_db()
    assert (task.machine, task.devices, task.current_step) == ("box", [0, 1], 6)
    assert "training on 2 processes (box: cpu 0, 1)" in task.logs and "checkpoint saved at step 3" in task.logs
    assert list(task.checkpoints.values_list("step", flat=True)) == [3]
    assert len(task.loss_history) >= 2 and task.loss_history[-1][0] == 6
    weights = load_file(task.weights.path)
    assert any(float(t.abs().max()) > 0 for name, t in weights.items() if "lora_B" in name)
    assert machine_free_devices(TWO_CPUS) == [0, 1]  # given back with the end of the run


@pytest.mark.slow
@postgres_pass_only("real ranks under the runner")
def test_a_rank_killed_mid_run_requeues_the_task_like_a_lost_worker(
    tiny_sd15: Path, fast_training: dict, settings
) -> None:
    task = on_two_cpu_devices(settings, fast_training, steps=400, save_every=2)
    checkpoint = Path(settings.TRAINING_WORK_DIR) / str(task.pk) / "output" / "checkpoints" / "step-0000002"
    killed: list[int] = []

    def kill_rank_1_after_the_first_checkpoint() -> None:
        deadline = time.monotonic() + HANG_CEILING
        while not checkpoint.is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        killed.append(rank_pid(1))
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_1_after_the_first_checkpoint)
    killer.start()
    outcome = run_training_task(str(task.pk))
    killer.join(HANG_CEILING)
    task.refresh_from_db()
    assert killed and outcome == TrainingTask.Status.PENDING == task.status
    assert task.failure_reason == "internal" and task.attempt_count == 1
    assert "Root Cause: rank 1 (local_rank: 1), exitcode -9" in task.logs  # torchrun's report, in the task's log
    assert task.current_step < 400
    with pytest.raises(AssertionError):
        rank_pid(0)  # the other rank was stopped with the group
    assert machine_free_devices(TWO_CPUS) == [0, 1]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@postgres_pass_only("a web server, a cluster and Redis")
def test_a_web_machine_and_a_two_gpu_worker_machine_share_the_database_and_a_redis_broker(
    tiny_sd15: Path, fast_training: dict, settings, tmp_path: Path
) -> None:
    """Two "machines" as a deployment runs them: gunicorn (the API) and a qcluster offering 2 devices,
    sharing the database and the Redis broker; a 2-GPU training started over HTTP runs on both devices."""
    import uuid

    import httpx
    import redis
    from django_q.models import OrmQ

    from tests.factories import api_token
    from tests.helpers import HANG_GUARD, start_cluster, start_web_server, stop_cluster, wait_for

    broker = {
        "Q_BROKER": "redis",
        "REDIS_URL": "redis://127.0.0.1:6379/11",
        "Q_QUEUE_NAME": f"t-{uuid.uuid4().hex[:8]}",
    }
    redis.Redis.from_url(broker["REDIS_URL"]).flushdb()
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, "steps": 4, "gpus": 2, "base_model_path": str(tiny_sd15)})
    machine = {"TRAINING_GPUS": "2", "TRAINING_DEVICE": "cpu", "TRAINING_MACHINE_NAME": "gpu-box", **broker}
    cluster = start_cluster(settings, "gpu-box", **machine)
    web, url = start_web_server(settings, tmp_path / "web.log", workers=1, threads=2, **broker)
    try:
        wait_for(
            lambda: WorkerMachine.objects.filter(name="gpu-box", gpus=2).exists(),
            timeout=HANG_GUARD,
            what="the machine",
        )
        headers = {"Authorization": f"Bearer {api_token(model.team)}"}

        def web_answers() -> bool:
            try:
                return httpx.get(f"{url}/v1/models/{model.public_id}", headers=headers, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(web_answers, timeout=HANG_GUARD, what="the web server")
        started = httpx.get(f"{url}/v1/models/{model.public_id}/train", headers=headers, timeout=60)
        assert started.status_code == 200, started.text
        wait_for(
            lambda: TrainingTask.objects.filter(model=model, completed_at__isnull=False).exists(),
            timeout=HANG_GUARD,
            what="the training to end",
        )
    finally:
        stop_cluster(web)
        stop_cluster(cluster)
    task = TrainingTask.objects.get(model=model)
    assert task.status == TrainingTask.Status.COMPLETED, task.logs
    assert (task.machine, task.devices, task.attempt_count) == ("gpu-box", [0, 1], 1)
    assert "training on 2 processes (gpu-box: cpu 0, 1)" in task.logs
    assert not OrmQ.objects.exists()  # the start message went through Redis, not the database


def test_the_admin_shows_which_devices_a_task_holds(client, settings) -> None:
    from tests.factories import UserFactory

    settings.TRAINING_GPUS = 2
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    started(gpus=2, batch_size=2)
    task = machine_claim(worker_id="box:w1", machine=TWO_CPUS)
    assert task is not None
    machines = client.get("/admin/models_app/workermachine/")
    assert machines.status_code == 200
    assert f"GPU 0, 1: task {str(task.pk)[:8]}" in machines.content.decode()
    page = client.get(f"/admin/models_app/trainingtask/{task.pk}/change/").content.decode()
    assert "Devices held" in page and "box: GPU 0, 1" in page


def test_a_rank_out_of_memory_is_reported_as_such() -> None:
    from training.launch import RanksFailed
    from training.runner import is_out_of_memory

    assert is_out_of_memory(RanksFailed("a training process exited with code 1", out_of_memory=True))
    assert not is_out_of_memory(RanksFailed("a training process exited with code 1"))
