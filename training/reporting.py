"""What a running training tells the database, split by job:

- `PhaseClock`: wall seconds per phase, summed over attempts (`stage_seconds`) and per attempt
  (`attempt_history`);
- `ProgressBuffer`: log lines and progress fields gathered between writes, written at a bounded
  rate through the worker protocol (which also answers whether a cancel was requested);
- `TaskReporter`: the engine's callbacks, routing each event to the clock, the buffer, the stored
  files (samples, checkpoints) and the webhooks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from models_app.models import TrainingTask
from models_app.services.task_files import training_checkpoint_record, training_task_add_sample
from models_app.services.task_states import log_tail
from models_app.services.webhooks import webhook_emit
from models_app.services.worker_protocol import (
    LeaseLost,
    training_task_begin_training,
    training_task_record_progress,
)
from training import engine
from training.lease import Heartbeat, shutdown_requested

logger = logging.getLogger(__name__)

MAX_LOSS_POINTS = 500
# How often the cancel flag is read when no progress write reads it anyway.
CANCEL_CHECK_SECONDS = 1.0


class PhaseClock:
    """Wall seconds per phase. `stage_seconds` sums every attempt (what earlier attempts had written
    when they last wrote, a lost one included), and `attempt_history` keeps each attempt's own."""

    def __init__(self, task: TrainingTask, worker_id: str) -> None:
        self.earlier_seconds: dict[str, float] = dict(task.stage_seconds or {})
        if "queue" not in self.earlier_seconds and task.started_at is not None:
            self.earlier_seconds["queue"] = round((task.started_at - task.created_at).total_seconds(), 3)
        self.attempt_seconds: dict[str, float] = {}
        self.attempt_history: list[dict[str, Any]] = [
            *(task.attempt_history or []),
            {
                "attempt": task.attempt_count,
                "worker": worker_id,
                "started_at": timezone.now().isoformat(),
                "stage_seconds": {},
            },
        ]
        self.stage: str | None = None
        self.stage_since = time.monotonic()

    def enter(self, stage: str | None) -> None:
        """Close the current phase's clock and start `stage`'s (None: the run is over)."""
        if stage == self.stage:
            return
        now = time.monotonic()
        if self.stage is not None:
            spent = self.attempt_seconds.get(self.stage, 0.0) + now - self.stage_since
            self.attempt_seconds[self.stage] = round(spent, 3)
        self.stage, self.stage_since = stage, now

    def fields(self, outcome: str = "") -> dict[str, Any]:
        """stage_seconds and attempt_history as of now, the running phase counted up to this moment, so
        an attempt that dies loses at most the time since its last write."""
        current = dict(self.attempt_seconds)
        if self.stage is not None:
            current[self.stage] = round(current.get(self.stage, 0.0) + time.monotonic() - self.stage_since, 3)
        total = dict(self.earlier_seconds)
        for stage, seconds in current.items():
            total[stage] = round(total.get(stage, 0.0) + seconds, 3)
        self.attempt_history[-1] = {**self.attempt_history[-1], "stage_seconds": current}
        if outcome:
            self.attempt_history[-1]["outcome"] = outcome
            self.attempt_history[-1]["ended_at"] = timezone.now().isoformat()
        return {"stage_seconds": total, "attempt_history": list(self.attempt_history)}


class ProgressBuffer:
    """Log lines and fields waiting for the next write; `flush` writes them at most every
    TRAINING_PROGRESS_WRITE_SECONDS (or now, when forced) and learns whether a cancel was requested."""

    def __init__(self, task: TrainingTask, worker_id: str, clock: PhaseClock) -> None:
        self.task_id = task.pk
        self.worker_id = worker_id
        self.clock = clock
        self.logs = task.logs
        self.pending_lines: list[str] = []
        self.pending_fields: dict[str, Any] = {}
        self.last_write = 0.0
        self.cancel_requested = False

    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
        self.pending_lines.append(f"{stamp} {message}")
        logger.info("task %s: %s", self.task_id, message)

    def drain(self, outcome: str = "") -> dict[str, Any]:
        """The fields gathered so far plus the log and the clocks, and forget them."""
        fields = {**self.pending_fields, **self.clock.fields(outcome)}
        if self.pending_lines:
            self.logs = log_tail(self.logs, self.pending_lines)
            self.pending_lines = []
            fields["logs"] = self.logs
        self.pending_fields = {}
        return fields

    def flush(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < settings.TRAINING_PROGRESS_WRITE_SECONDS:
            return
        fields = self.drain()
        try:
            cancel = training_task_record_progress(task_id=self.task_id, worker_id=self.worker_id, fields=fields)
        except DatabaseError as exc:
            # A busy or briefly unreachable database: keep the fields for the next write and train on.
            # The lease is the heartbeat's business; it stops the run if it cannot renew in time.
            logger.warning("task %s: progress not written (%s); retrying with the next write", self.task_id, exc)
            self.pending_fields = {**fields, **self.pending_fields}
            self.pending_fields.pop("logs", None)  # self.logs holds them; the next drain writes them
            connection.close()
            self.last_write = now
            return
        self.cancel_requested = cancel or self.cancel_requested
        self.last_write = now


class TaskReporter:
    """The engine's callbacks (engine.TrainingCallbacks) for one attempt at a task."""

    def __init__(self, task: TrainingTask, worker_id: str) -> None:
        self.task_id = task.pk
        self.worker_id = worker_id
        self.clock = PhaseClock(task, worker_id)
        self.buffer = ProgressBuffer(task, worker_id, self.clock)
        self.keep_checkpoints = task.max_step_saves_to_keep
        self.training_started = False
        self.last_webhook = 0.0
        self.heartbeat: Heartbeat | None = None
        self.loss_history: list[list[float]] = list(task.loss_history or [])
        self.validation_history: list[list[float]] = list(task.validation_history or [])

    # The buffer's parts the runner and tests reach through the reporter.
    @property
    def pending_fields(self) -> dict[str, Any]:
        return self.buffer.pending_fields

    @property
    def pending_lines(self) -> list[str]:
        return self.buffer.pending_lines

    def log(self, message: str) -> None:
        self.buffer.log(message)

    def flush(self, *, force: bool = False) -> None:
        self.buffer.flush(force=force)

    def finish(self, outcome: str) -> dict[str, Any]:
        """The last fields to write when the run ends; `outcome` is recorded in the attempt's history."""
        self.clock.enter(None)
        return self.buffer.drain(outcome)

    def on_stage(self, stage: str, processed: int, total: int) -> None:
        self.clock.enter(stage)
        if stage == "training" and not self.training_started:
            self.training_started = True
            self.log("preprocessing done; training started")
            training_task_begin_training(task_id=self.task_id, worker_id=self.worker_id, fields=self.buffer.drain())
            self.buffer.last_write = time.monotonic()
            return
        if stage == "loading":
            self.log("loading the base model")  # not a pass over the files: their counts stay
        elif stage != "exporting":
            self.pending_fields.update(
                preprocessing_stage=stage, processed_files_count=processed, total_files_count=total
            )
            if processed == 0:
                self.log(f"{stage}: {total} item(s)")
        elif processed == 0:
            self.log("exporting weights")
        self.flush()

    def on_progress(self, progress: engine.Progress) -> None:
        if progress.loss is not None:
            # [step, loss], or [step, loss, smoothed loss]: readers of the first two numbers are unchanged.
            point = [progress.step, round(progress.loss, 6)]
            if progress.smoothed_loss is not None:
                point.append(round(progress.smoothed_loss, 6))
            self.loss_history = bounded_history(self.loss_history, point)
            self.pending_fields["loss_history"] = self.loss_history
        self.pending_fields.update(
            current_step=progress.step,
            total_steps=progress.total_steps,
            progress=round(100.0 * progress.step / max(1, progress.total_steps), 2),
            eta_seconds=progress.eta_seconds,
            loss=progress.loss,
        )
        self.flush(force=progress.step == progress.total_steps)
        now = time.monotonic()
        if now - self.last_webhook >= settings.WEBHOOK_PROGRESS_SECONDS:
            self.last_webhook = now
            webhook_emit(task_id=self.task_id, event="progress", data={"loss": progress.loss})

    def on_log(self, message: str) -> None:
        self.log(message)

    def on_sample(self, step: int, prompt: str, path: Path) -> None:
        training_task_add_sample(task_id=self.task_id, step=step, prompt=prompt, path=path)
        self.log(f"sample at step {step}: {prompt}")

    def on_checkpoint(self, step: int, path: Path) -> None:
        training_checkpoint_record(task_id=self.task_id, step=step, folder=path, keep=self.keep_checkpoints)
        self.log(f"checkpoint saved at step {step}")
        self.flush(force=True)
        webhook_emit(task_id=self.task_id, event="checkpoint", data={"step": step})

    def on_snapshot(self, step: int, path: Path) -> None:
        # The worker's crash-safety save: where a new attempt resumes, not one of the user's checkpoints.
        training_checkpoint_record(
            task_id=self.task_id, step=step, folder=path, keep=self.keep_checkpoints, snapshot=True
        )
        self.log(f"snapshot saved at step {step}")
        self.flush(force=True)

    def on_validation(self, step: int, loss: float) -> None:
        self.validation_history = bounded_history(self.validation_history, [step, round(loss, 6)])
        self.pending_fields["validation_history"] = self.validation_history
        self.flush()

    def should_suspend(self) -> bool:
        return shutdown_requested.is_set()

    def should_cancel(self) -> bool:
        if self.heartbeat is not None and self.heartbeat.lost:
            raise LeaseLost(f"training task {self.task_id}: {self.heartbeat.lost_reason}")
        if self.buffer.cancel_requested:
            return True
        if time.monotonic() - self.buffer.last_write >= CANCEL_CHECK_SECONDS:
            self.flush(force=True)
        return self.buffer.cancel_requested


def bounded_history(history: list[list[float]], point: list[float]) -> list[list[float]]:
    """The curve with `point` added: a resume repeats steps, so later points go; thinned past MAX_LOSS_POINTS."""
    kept = [p for p in history if p[0] < point[0]]
    kept.append(point)
    if len(kept) > MAX_LOSS_POINTS:
        kept = kept[::2]  # keep the whole curve, at half the density
    return kept
