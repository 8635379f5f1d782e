"""Worker machines and the GPUs their trainings hold.

A machine's workers advertise it (its name, how many devices it shares out) each time one looks for
work. A claim takes a pending task only when the machine has as many free devices as the task asks
for (`gpus`), and records which ones the task holds (`TrainingTask.machine`, `.devices`) in the same
transaction: a device is free when no running task of the machine holds it, so devices come back by
themselves when a task ends, fails, is handed back or reaped.

LOCK ORDER: a claim locks its machine's row first (an UPDATE of it, which on SQLite also takes the
database's write lock), then the task's rows in task_states' order. The machine lock makes the
machine's workers claim one at a time, so two of them never pick the same free devices.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from models_app.models import TrainingTask, WorkerMachine
from models_app.services.worker_protocol import training_task_claim

# Tried in turn when other machines' workers take the queue's head between our read and our update.
CLAIM_TRIES = 20


@dataclass(frozen=True)
class MachineSpec:
    """What a worker says of its machine (from its settings: training/lease.py builds it)."""

    name: str
    gpus: int
    device_type: str  # "cuda", or "cpu" for CPU processes
    # False for a cluster scheduler's pool (TRAINING_EXECUTION=ray): it places each job on a node itself;
    # `gpus` is then only the most one job may ask for, and a claim holds no device indices.
    holds_devices: bool = True


def machine_advertise(machine: MachineSpec) -> None:
    """Record the machine (or its new GPU count) as seen now; inside a claim, this is also its lock."""
    now = timezone.now()
    fields = {"gpus": machine.gpus, "device_type": machine.device_type, "last_seen_at": now}
    if WorkerMachine.objects.filter(name=machine.name).update(**fields):
        return
    try:
        with transaction.atomic():
            WorkerMachine.objects.create(name=machine.name, **fields)
    except IntegrityError:  # another worker of the machine registered it first
        WorkerMachine.objects.filter(name=machine.name).update(**fields)


def machine_free_devices(machine: MachineSpec) -> list[int]:
    """The machine's device indices that no running task holds."""
    if not machine.holds_devices:
        return list(range(machine.gpus))
    held: set[int] = set()
    for devices in TrainingTask.objects.filter(
        machine=machine.name, status__in=TrainingTask.RUNNING_STATUSES
    ).values_list("devices", flat=True):
        held.update(int(index) for index in devices or [])
    return [index for index in range(machine.gpus) if index not in held]


def machine_claim(*, worker_id: str, machine: MachineSpec, task_id: str | None = None) -> TrainingTask | None:
    """Claim `task_id` (or the best pending task, by priority then age) if it fits the machine's free
    devices, holding the first `gpus` of them; None when nothing pending fits now. A task asking for
    more devices than are free waits for them (smaller tasks behind it may run meanwhile)."""
    for _ in range(CLAIM_TRIES):
        with transaction.atomic():
            machine_advertise(machine)  # the machine's lock, until this transaction ends
            free = machine_free_devices(machine)
            pending = TrainingTask.objects.filter(status=TrainingTask.Status.PENDING, gpus__lte=len(free))
            if task_id is not None:
                pending = pending.filter(pk=task_id)
            candidate = pending.order_by("-priority", "created_at", "pk").values_list("pk", "gpus").first()
            if candidate is None:
                return None
            pk, gpus = candidate
            claimed = training_task_claim(
                task_id=str(pk),
                worker_id=worker_id,
                machine=machine.name,
                devices=free[:gpus] if machine.holds_devices else None,
            )
        if claimed is not None or task_id is not None:
            return claimed
    return None


def largest_machine_gpus() -> int:
    """The most devices any one machine offers: a task asking for more can never run. With no machine
    registered yet (a fresh install whose workers have not started), this machine's own TRAINING_GPUS."""
    most = WorkerMachine.objects.order_by("-gpus").values_list("gpus", flat=True).first()
    return int(most) if most is not None else int(settings.TRAINING_GPUS)
