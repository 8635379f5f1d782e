"""The worker side of one training task: claim it, run the engine, publish the result.

Everything the runner writes goes through the worker protocol (models_app/services/worker_protocol.py),
so the database stays the truth: a runner that loses its claim (the task was cancelled, reaped or
finished elsewhere) stops and writes nothing more. Its lease and clean stop are `training/lease.py`;
what it reports while the engine runs is `training/reporting.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import traceback
from pathlib import Path
from typing import Any

from django.conf import settings

from models_app import selectors
from models_app.models import Model, TrainingCheckpoint, TrainingImage, TrainingTask
from models_app.services.machines import machine_claim
from models_app.services.training import ENGINE_OPTIONS, PAIRS_NOT_TRAINED, captions_not_used
from models_app.services.worker_protocol import (
    LeaseLost,
    training_task_cancelled,
    training_task_complete,
    training_task_fail,
    training_task_release,
)
from training import engine
from training.launch import train_on_ranks
from training.lease import Heartbeat, shutdown_requested, suspend_on_shutdown_signal, worker_identity, worker_machine
from training.reporting import TaskReporter
from training.storage_io import local_copy, stored_name

logger = logging.getLogger(__name__)


def run_next_training() -> str:
    """Claim the best pending task (priority, then age) that fits this machine's free GPUs and run it;
    "idle" when none does."""
    suspend_on_shutdown_signal()
    if shutdown_requested.is_set():
        return "shutting-down"  # the cluster is stopping: leave the task for another worker
    worker_id = worker_identity()
    task = machine_claim(worker_id=worker_id, machine=worker_machine())
    if task is None:
        return "idle"
    return run_claimed(task, worker_id)


def run_training_task(task_id: str) -> str:
    """Claim this task and run it to its end. Returns its final status, or "not-claimed"."""
    suspend_on_shutdown_signal()
    if shutdown_requested.is_set():
        return "shutting-down"
    worker_id = worker_identity()
    task = machine_claim(worker_id=worker_id, machine=worker_machine(), task_id=task_id)
    if task is None:
        logger.info(
            "training task %s was not claimed: another worker has it, it was cancelled, or it waits for GPUs", task_id
        )
        return "not-claimed"
    return run_claimed(task, worker_id)


def run_claimed(task: TrainingTask, worker_id: str) -> str:
    """Run the claimed attempt here, or hand it to the Ray cluster and follow it there."""
    if settings.TRAINING_EXECUTION == "ray":
        from training.ray_jobs import run_on_ray

        return run_on_ray(task, worker_id)
    return run_attempt(task, worker_id)


def run_attempt(task: TrainingTask, worker_id: str) -> str:
    """The attempt in this process (or its ranks): lease, engine, reports, and the result published."""
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
            result = run_engine(task, spec, reporter, work_dir)
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


def run_engine(
    task: TrainingTask, spec: engine.TrainingSpec, reporter: TaskReporter, work_dir: Path
) -> engine.TrainingResult:
    """The engine in this process on the task's one device, or its ranks on the task's devices. A
    one-GPU task on a machine whose workers share several GPUs runs in a child process too: the GPU
    memory a process keeps after training (its CUDA context, torch's cache) goes with it, so the next
    task on that device finds the whole card."""
    if task.gpus <= 1 and not (task.devices and settings.TRAINING_GPUS > 1 and (spec.device or "").startswith("cuda")):
        return engine.train(spec, reporter)
    if task.gpus <= 1:
        spec = dataclasses.replace(spec, device="cuda")  # its one visible device, the one it holds
        return train_on_ranks(spec, reporter, processes=1, devices=[int(task.devices[0])], work_dir=work_dir)
    where = f"{task.machine}: {spec.device or 'cuda'} {', '.join(str(d) for d in task.devices)}"
    reporter.log(f"training on {task.gpus} processes ({where})")
    # No device indices: a cluster scheduler gave the job its GPUs (CUDA_VISIBLE_DEVICES as it set it).
    devices = [int(index) for index in task.devices] or None
    return train_on_ranks(spec, reporter, processes=task.gpus, devices=devices, work_dir=work_dir)


def task_device(task: TrainingTask) -> str | None:
    """The device a one-GPU task trains on: the GPU it holds, else the worker's setting."""
    configured = settings.TRAINING_DEVICE
    if task.gpus > 1 or not task.devices or configured not in (None, "cuda"):
        return configured
    import torch

    if configured is None and not torch.cuda.is_available():
        return None  # no GPU here after all: the engine trains on the CPU
    return f"cuda:{int(task.devices[0])}"


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if getattr(exc, "out_of_memory", False):  # launch.RanksFailed: a rank's log said so
        return True
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
    pairs = []
    if task.model.type == Model.Type.EDIT:  # any other model trains text to image: its pairs are not read
        for pair in selectors.pair_list(model=task.model):
            sources = [pair.source.asset.public_id, *pair.extra_source_public_ids]
            if all(asset_id in dataset for asset_id in [*sources, pair.target.asset.public_id]):
                pairs.append(
                    engine.DatasetPair(
                        source=dataset[sources[0]],
                        other_sources=tuple(dataset[asset_id] for asset_id in sources[1:]),
                        target=dataset[pair.target.asset.public_id],
                        instruction=pair.instruction,
                    )
                )
    elif task.model.pairs.exists():
        reporter.log(PAIRS_NOT_TRAINED.format(kind=task.model.type))
    if note := captions_not_used(task.model, task.preprocessing_captioning_strategy):
        reporter.log(note)
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
        device=task_device(task),
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
