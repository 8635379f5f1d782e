"""The worker side of one training task: claim it, run the engine, report, publish the result.

Everything the runner writes goes through the training services, so the database stays the truth:
a runner that loses its claim (the task was cancelled, reaped or finished elsewhere) stops and
writes nothing more.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from models_app.models import TrainingCheckpoint, TrainingImage, TrainingTask
from models_app.services.training import (
    ENGINE_OPTIONS,
    LeaseLost,
    log_tail,
    training_checkpoint_record,
    training_task_add_sample,
    training_task_begin_training,
    training_task_cancelled,
    training_task_claim,
    training_task_claim_next,
    training_task_complete,
    training_task_fail,
    training_task_heartbeat,
    training_task_record_progress,
    training_task_release,
)
from models_app.services.webhooks import webhook_emit
from training import engine
from training.storage_io import local_copy, stored_name

logger = logging.getLogger(__name__)

MAX_LOSS_POINTS = 500
# How often the cancel flag is read when no progress write reads it anyway.
CANCEL_CHECK_SECONDS = 1.0
# Sent by our `qcluster` command to its worker processes when the cluster is asked to stop: a running
# training saves a snapshot and hands its task back. Every process of the cluster ignores it otherwise.
SHUTDOWN_SIGNAL = signal.SIGUSR1
shutdown_requested = threading.Event()


def worker_identity() -> str:
    """host:label:pid:random. Every training cluster shares the queue (Q_CLUSTER_NAME); the label tells
    them apart (TRAINING_WORKER_NAME, e.g. one per GPU)."""
    label = os.environ.get("TRAINING_WORKER_NAME") or settings.Q_CLUSTER.get("name", "worker")
    return f"{socket.gethostname()}:{label}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class TaskReporter:
    """The engine's callbacks, writing to the task row at a bounded rate."""

    def __init__(self, task: TrainingTask, worker_id: str) -> None:
        self.task_id = task.pk
        self.worker_id = worker_id
        self.logs = task.logs
        self.pending_lines: list[str] = []
        self.pending_fields: dict[str, Any] = {}
        self.last_write = 0.0
        self.last_cancel_check = 0.0
        self.cancel_requested = False
        self.training_started = False
        self.keep_checkpoints = task.max_step_saves_to_keep
        self.last_webhook = 0.0
        self.heartbeat: Heartbeat | None = None
        self.loss_history: list[list[float]] = list(task.loss_history or [])
        self.validation_history: list[list[float]] = list(task.validation_history or [])
        # Wall seconds per phase: `stage_seconds` sums every attempt (what earlier attempts had written
        # when they last wrote, a lost one included), and `attempt_history` keeps each attempt's own.
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

    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
        self.pending_lines.append(f"{stamp} {message}")
        logger.info("task %s: %s", self.task_id, message)

    def enter_stage(self, stage: str | None) -> None:
        """Close the current phase's clock and start `stage`'s (None: the run is over)."""
        if stage == self.stage:
            return
        now = time.monotonic()
        if self.stage is not None:
            spent = self.attempt_seconds.get(self.stage, 0.0) + now - self.stage_since
            self.attempt_seconds[self.stage] = round(spent, 3)
        self.stage, self.stage_since = stage, now

    def clock_fields(self, outcome: str = "") -> dict[str, Any]:
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

    def drain(self, outcome: str = "") -> dict[str, Any]:
        """The fields written so far plus the log and the clocks, and forget them."""
        fields = {**self.pending_fields, **self.clock_fields(outcome)}
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
            self.last_write = self.last_cancel_check = now
            return
        self.cancel_requested = cancel or self.cancel_requested
        self.last_write = self.last_cancel_check = now

    def finish(self, outcome: str) -> dict[str, Any]:
        """The last fields to write when the run ends; `outcome` is recorded in the attempt's history."""
        self.enter_stage(None)
        return self.drain(outcome)

    # engine.TrainingCallbacks
    def on_stage(self, stage: str, processed: int, total: int) -> None:
        self.enter_stage(stage)
        if stage == "training" and not self.training_started:
            self.training_started = True
            self.log("preprocessing done; training started")
            training_task_begin_training(task_id=self.task_id, worker_id=self.worker_id, fields=self.drain())
            self.last_write = time.monotonic()
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
        if self.cancel_requested:
            return True
        if time.monotonic() - self.last_cancel_check >= CANCEL_CHECK_SECONDS:
            self.flush(force=True)
        return self.cancel_requested


def bounded_history(history: list[list[float]], point: list[float]) -> list[list[float]]:
    """The curve with `point` added: a resume repeats steps, so later points go; thinned past MAX_LOSS_POINTS."""
    kept = [p for p in history if p[0] < point[0]]
    kept.append(point)
    if len(kept) > MAX_LOSS_POINTS:
        kept = kept[::2]  # keep the whole curve, at half the density
    return kept


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


def run_next_training() -> str:
    """Claim the best pending task (priority, then age) and run it; "idle" when none is pending."""
    suspend_on_shutdown_signal()
    if shutdown_requested.is_set():
        return "shutting-down"  # the cluster is stopping: leave the task for another worker
    worker_id = worker_identity()
    task = training_task_claim_next(worker_id=worker_id)
    if task is None:
        return "idle"
    return run_claimed(task, worker_id)


def run_training_task(task_id: str) -> str:
    """Claim this task and run it to its end. Returns its final status, or "not-claimed"."""
    suspend_on_shutdown_signal()
    if shutdown_requested.is_set():
        return "shutting-down"
    worker_id = worker_identity()
    task = training_task_claim(task_id=task_id, worker_id=worker_id)
    if task is None:
        logger.info("training task %s was not pending; another worker has it or it was cancelled", task_id)
        return "not-claimed"
    return run_claimed(task, worker_id)


def run_claimed(task: TrainingTask, worker_id: str) -> str:
    if settings.TRAINING_CPU_THREADS:
        import torch

        torch.set_num_threads(settings.TRAINING_CPU_THREADS)
    reporter = TaskReporter(task, worker_id)
    work_dir = Path(settings.TRAINING_WORK_DIR) / str(task.pk)
    reporter.log(f"attempt {task.attempt_count} of {task.max_attempts} on worker {worker_id}")
    try:
        with Heartbeat(task.pk, worker_id) as heartbeat:
            reporter.heartbeat = heartbeat
            spec = build_spec(task, work_dir, reporter)
            restore_checkpoint(task, spec.checkpoint_dir, reporter)
            result = engine.train(spec, reporter)
        reporter.log(f"finished {result.steps_done} steps, final loss {result.final_loss}")
        published = training_task_complete(
            task_id=task.pk,
            worker_id=worker_id,
            weights_path=result.weights_path,
            kohya_path=result.kohya_path,
            fields=reporter.finish("completed"),
        )
        return TrainingTask.Status.COMPLETED if published else "not-claimed"
    except engine.TrainingSuspended as suspended:
        reporter.log(f"the worker is shutting down: stopped at step {suspended.step}")
        return (
            training_task_release(
                task_id=task.pk, worker_id=worker_id, step=suspended.step, fields=reporter.finish("handed back")
            )
            or "not-claimed"
        )
    except engine.TrainingCancelled:
        reporter.log("cancelled at the user's request; checkpoints kept")
        training_task_cancelled(task_id=task.pk, worker_id=worker_id, fields=reporter.finish("cancelled"))
        return TrainingTask.Status.CANCELLED
    except LeaseLost:
        logger.warning("training task %s was taken from worker %s; stopping", task.pk, worker_id)
        return "not-claimed"
    except engine.EngineError as exc:
        # The dataset or the configuration: running it again would fail the same way.
        reporter.log(f"failed: {exc}")
        return training_task_fail(
            task_id=task.pk, worker_id=worker_id, message=str(exc), reason="bad_input", fields=reporter.finish("failed")
        )
    except Exception as exc:
        out_of_memory = is_out_of_memory(exc)
        logger.exception("training task %s crashed", task.pk)
        reporter.log("".join(traceback.format_exception_only(exc)).strip())
        message = (
            "the GPU ran out of memory"
            if out_of_memory
            else f"internal error during training: {type(exc).__name__}: {exc}"
        )
        # Out of memory and environment trouble may pass on another worker or a later try.
        return training_task_fail(
            task_id=task.pk,
            worker_id=worker_id,
            message=message,
            reason="out_of_memory" if out_of_memory else "internal",
            retriable=True,
            fields=reporter.finish(f"failed: {message}"),
        )


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower()


def restore_checkpoint(task: TrainingTask, directory: Path, reporter: TaskReporter) -> None:
    """Bring the newest checkpoint or snapshot from shared storage when this machine has nothing as
    new (another worker made it); the engine then resumes from the highest step on its disk."""
    from django.core.files.storage import default_storage

    from training.engine.checkpoints import FILES

    # The newest step; at equal steps a user checkpoint (same files) before a snapshot.
    newest = TrainingCheckpoint.objects.filter(task=task).order_by("-step", "snapshot").first()
    if newest is None:
        return
    kind = "snapshot" if newest.snapshot else "checkpoint"
    if max(local_steps(directory), default=-1) >= newest.step:
        return  # this machine made it (or a newer one): nothing to fetch
    if set(FILES) - set(newest.files):
        reporter.log(f"the stored {kind} at step {newest.step} is incomplete; not used")
        return
    partial = directory / f"{newest.folder_name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    for file_name, storage_name in newest.files.items():
        with default_storage.open(storage_name, "rb") as source, open(partial / file_name, "wb") as target:
            shutil.copyfileobj(source, target, length=1024 * 1024)
    partial.rename(directory / newest.folder_name)
    reporter.log(f"fetched the {kind} at step {newest.step} from storage")


def local_steps(directory: Path) -> list[int]:
    """The steps of the complete checkpoint (`step-…`) and snapshot (`snapshot-…`) folders on this disk."""
    if not directory.is_dir():
        return []
    steps = []
    for path in directory.iterdir():
        prefix, _, number = path.name.partition("-")
        if path.is_dir() and prefix in ("step", "snapshot") and number.isdigit():
            steps.append(int(number))
    return steps


def build_spec(task: TrainingTask, work_dir: Path, reporter: TaskReporter) -> engine.TrainingSpec:
    """Copy the task's images to the worker's disk and turn the task's fields into an engine spec."""
    dataset_dir = work_dir / "dataset"
    images = {
        image.asset.public_id: image
        for image in TrainingImage.objects.filter(
            model_id=task.model.pk, asset__public_id__in=task.source_images
        ).select_related("asset")
    }
    missing = [asset_id for asset_id in task.source_images if asset_id not in images]
    if missing:
        raise engine.EngineError(f"training images removed after the start: {', '.join(missing)}")
    options = task.training_options or {}
    held_out = set(options.get("validation_images") or [])
    dataset: dict[str, engine.DatasetImage] = {}
    reporter.on_stage("downloading", 0, len(task.source_images))
    for index, asset_id in enumerate(task.source_images):
        image = images[asset_id]
        suffix = Path(stored_name(image.asset.file)).suffix
        path = local_copy(image.asset.file, dataset_dir / f"{index:04d}-{asset_id}{suffix}")
        if image.sidecar_caption:
            # Kohya layout: the caption file beside the image, for the `filename` strategy.
            path.with_suffix(".txt").write_text(image.sidecar_caption, encoding="utf-8")
        dataset[asset_id] = engine.DatasetImage(
            path=path, name=image.name, caption=image.description, validation=asset_id in held_out
        )
        reporter.on_stage("downloading", index + 1, len(task.source_images))
    pairs = [
        engine.DatasetPair(
            source=dataset[pair.source.asset.public_id],
            target=dataset[pair.target.asset.public_id],
            instruction=pair.instruction,
        )
        for pair in task.model.pairs.select_related("source__asset", "target__asset")
        if pair.source.asset.public_id in dataset and pair.target.asset.public_id in dataset
    ]
    reporter.pending_fields.update(training_folder=str(work_dir), processed_dataset_path=str(dataset_dir))
    return engine.TrainingSpec(
        base_model=task.base_model_path,
        output_dir=work_dir / "output",
        images=list(dataset.values()),
        pairs=pairs,
        trigger_word=task.trigger_word,
        training_type=task.training_type,
        rank=task.rank,
        lora_alpha=task.lora_alpha,
        steps=task.steps,
        learning_rate=task.learning_rate,
        batch_size=task.batch_size,
        gradient_accumulation=task.gradient_accumulation,
        optimizer=task.optimizer,
        resolution=task.resolution,
        seed=task.seed,
        captioning_strategy=task.preprocessing_captioning_strategy,
        captioning_prompt=task.preprocessing_captioning_prompt,
        captioner=local_captioner() if task.preprocessing_captioning_strategy == "automatic" else None,
        transforms=task.preprocessing_transforms,
        bypass_guidance_embedding=task.bypass_guidance_embedding,
        save_every=task.save_every,
        max_step_saves_to_keep=task.max_step_saves_to_keep,
        sample_every=task.sample_every,
        sample_steps=task.sample_steps,
        sample_prompts=list(task.sample_prompts or []),
        device=settings.TRAINING_DEVICE,
        **spec_options(options),
    )


SPEC_FIELDS = frozenset(field.name for field in dataclasses.fields(engine.TrainingSpec))


def spec_options(options: dict[str, Any]) -> dict[str, Any]:
    """The task's engine options that name a TrainingSpec field, by that name; an option a task
    started before it existed keeps the engine's default."""
    return {name: options[name] for name in ENGINE_OPTIONS if name in SPEC_FIELDS and name in options}


def local_captioner() -> engine.spec.Captioner | None:
    """The configured local captioning model, or None (the engine then explains what is missing)."""
    model_path = settings.TRAINING_CAPTION_MODEL
    if not model_path:
        return None
    from training.engine.captioning import TransformersCaptioner

    return TransformersCaptioner(model_path, device=settings.TRAINING_DEVICE)
