"""The training loop shared by every family, in the order of the method: set the family up, prepare and cache
the dataset, make the model trainable, resume, then step (noise / predict / loss / step: step.py) with
progress, checkpoints, validation and samples along the way, and export. Each phase lives in a module of
its own; this one only puts them in order."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from training.engine import distributed
from training.engine.base_models import resolve_family
from training.engine.data import PreparedItem
from training.engine.errors import EngineError, TrainingCancelled, TrainingSuspended
from training.engine.export import export_weights
from training.engine.families import Family
from training.engine.generate import pick_device
from training.engine.spec import Progress, TrainingCallbacks, TrainingResult, TrainingSpec
from training.engine.trainer.cache import prepare_dataset
from training.engine.trainer.checkpointing import resume, run_config_fingerprint, save_on_main
from training.engine.trainer.context import StepContext, step_context
from training.engine.trainer.sampling import take_samples
from training.engine.trainer.setup import Trainable, check_spec, make_trainable, set_up_family
from training.engine.trainer.step import train_step
from training.engine.trainer.validation import evaluation_weights, validation_indices, validation_loss

LOSS_SMOOTHING = 0.05  # weight of the newest step in the reported smoothed loss


def train(spec: TrainingSpec, callbacks: TrainingCallbacks) -> TrainingResult:
    """Train as the spec says. Under torchrun each rank calls this (distributed.py says what differs)."""
    ranks = distributed.current_ranks()
    check_spec(spec)
    share = distributed.Share.of(ranks, spec.batch_size, spec.gradient_accumulation)
    family_name = resolve_family(spec.base_model)
    device = distributed.rank_device(pick_device(spec.device), ranks)
    distributed.join(ranks, device)
    if ranks.active:
        callbacks = distributed.RankCallbacks(callbacks, ranks)
    result = train_ranks(spec, callbacks, ranks, share, family_name, device)
    # Only after a run every rank finished: a rank leaving on an exception of its own while the others
    # wait in a collective could block there; its process ends instead, and torchrun stops the rest.
    distributed.leave(ranks)
    return result


def train_ranks(
    spec: TrainingSpec,
    callbacks: TrainingCallbacks,
    ranks: distributed.Ranks,
    share: distributed.Share,
    family_name: str,
    device: torch.device,
) -> TrainingResult:
    family, resolution, transforms = set_up_family(spec, family_name, device)

    # Preprocess, then cache: each image and caption is encoded once, not once per step.
    items, fingerprint, cache = prepare_dataset(spec, family, resolution, transforms, callbacks, ranks)
    held_out = validation_indices(spec, items)
    check_cancel(callbacks)
    if callbacks.should_suspend():
        raise TrainingSuspended(0)  # the cache stays on disk for the next attempt on this machine

    # The denoiser: frozen base with trainable adapters, or (FULL) entirely trainable.
    torch.manual_seed(spec.seed)
    generator = torch.Generator(device="cpu").manual_seed(spec.seed)
    model = make_trainable(spec, family, device, ranks, callbacks)
    run_fingerprint = run_config_fingerprint(spec, fingerprint)
    start_step, smoothed = resume(spec, model, generator, run_fingerprint, device, callbacks)

    context = step_context(spec, family, model, cache, items, held_out, transforms, generator, device, share)
    callbacks.on_log(
        f"{len(items) - len(held_out)} training images ({len(held_out)} held out for validation), "
        f"{context.sampler.batches_per_epoch} batches per epoch, "
        f"{math.ceil(spec.steps * max(1, spec.gradient_accumulation) / context.sampler.batches_per_epoch)} epochs"
    )
    validation = sorted(held_out)
    if validation and start_step == 0:
        with evaluation_weights(context):
            callbacks.on_validation(0, validation_loss(context, validation))

    loop = Loop(context, callbacks, ranks, run_fingerprint, validation, items, resolution, start_step, smoothed)
    loop.run()
    return export(spec, family, model, items, fingerprint, resolution, ranks, callbacks, loop)


class Loop:
    """The steps from the one after `start_step` to the last, and what is due after each: progress, the
    user's checkpoints and the worker's snapshots, validation and samples, a suspend or a cancel."""

    def __init__(
        self,
        context: StepContext,
        callbacks: TrainingCallbacks,
        ranks: distributed.Ranks,
        run_fingerprint: str,
        validation: list[int],
        items: list[PreparedItem],
        resolution: int,
        start_step: int,
        smoothed: torch.Tensor | None,
    ) -> None:
        self.context, self.spec, self.callbacks, self.ranks = context, context.spec, callbacks, ranks
        self.run_fingerprint = run_fingerprint
        self.validation, self.items, self.resolution = validation, items, resolution
        self.start_step, self.smoothed = start_step, smoothed
        self.loss_value: float | None = None
        self.samples: list[Path] = []

    def run(self) -> None:
        spec = self.spec
        self.callbacks.on_stage("training", self.start_step, spec.steps)
        self.started = time.monotonic()
        self.last_report = 0.0
        self.last_snapshot_time, self.last_snapshot_step = self.started, self.start_step
        for step in range(self.start_step + 1, spec.steps + 1):
            step_loss = train_step(self.context, step)
            # Smoothed on the device: reading every step's loss back would make the host wait for it.
            smoothed = step_loss if self.smoothed is None else torch.lerp(self.smoothed, step_loss, LOSS_SMOOTHING)
            self.smoothed = smoothed
            now = time.monotonic()
            self.report(step, step_loss, smoothed, now)
            # A worker shutting down: save where the next attempt resumes, then stop (after samples are due).
            suspend = step < spec.steps and self.callbacks.should_suspend()
            self.save(step, smoothed, now, suspend=suspend)
            if (step % spec.sample_every == 0 or step == spec.steps) and (self.validation or spec.sample_prompts):
                self.evaluate(step)
            if suspend:
                raise TrainingSuspended(step)
            if step < spec.steps:
                check_cancel(self.callbacks)

    def report(self, step: int, step_loss: torch.Tensor, smoothed: torch.Tensor, now: float) -> None:
        """Progress at the reporting rate (and at the last step), read back from the device only then."""
        spec = self.spec
        if not self.ranks.main or (step != spec.steps and now - self.last_report < spec.progress_interval_seconds):
            return
        self.loss_value = float(step_loss)
        if not math.isfinite(self.loss_value):
            raise EngineError(
                f"training diverged at step {step}: the loss is {self.loss_value}; "
                "lower the learning_rate or check the images"
            )
        done = step - self.start_step
        self.callbacks.on_progress(
            progress(
                step, spec.steps, self.loss_value, float(smoothed), self.context.scheduler, now - self.started, done
            )
        )
        self.last_report = now

    def save(self, step: int, smoothed: torch.Tensor, now: float, *, suspend: bool) -> None:
        """The user's checkpoint every `save_every` steps, and the worker's own snapshot whatever save_every
        says (a crash loses at most its cadence), or where a suspended run resumes."""
        spec, ranks = self.spec, self.ranks
        user_checkpoint = step < spec.steps and spec.save_every and step % spec.save_every == 0
        snapshot_due = step < spec.steps and (
            step - self.last_snapshot_step >= spec.snapshot_every_steps
            or now - self.last_snapshot_time >= spec.snapshot_every_seconds
        )
        if ranks.active:
            snapshot_due = distributed.from_main(ranks, snapshot_due)  # rank 0's clock decides
        if not (user_checkpoint or snapshot_due or suspend):
            return
        ema = self.context.ema
        saved = save_on_main(
            self.context,
            ranks,
            step=step,
            fingerprint=self.run_fingerprint,
            keep=spec.max_step_saves_to_keep if user_checkpoint else 1,
            kind="step" if user_checkpoint else "snapshot",
            state={"smoothed_loss": float(smoothed), "ema_step": ema.optimization_step if ema else 0},
        )
        if saved is not None:
            (self.callbacks.on_checkpoint if user_checkpoint else self.callbacks.on_snapshot)(step, saved)
        self.last_snapshot_time, self.last_snapshot_step = time.monotonic(), step

    def evaluate(self, step: int) -> None:
        """Validation loss and samples, with the weights the user will get."""
        context, spec = self.context, self.spec
        with evaluation_weights(context):
            if self.validation:
                self.callbacks.on_validation(step, validation_loss(context, self.validation))
            if spec.sample_prompts:
                self.samples += take_samples(
                    spec,
                    context.family,
                    context.denoiser,
                    self.items,
                    step,
                    self.resolution,
                    self.callbacks,
                    context.text_encoders,
                    ranks=self.ranks,
                )


def export(
    spec: TrainingSpec,
    family: Family,
    model: Trainable,
    items: list[PreparedItem],
    fingerprint: str,
    resolution: int,
    ranks: distributed.Ranks,
    callbacks: TrainingCallbacks,
    loop: Loop,
) -> TrainingResult:
    """The result files, written by rank 0 (with the averaged weights when `ema` is on)."""
    callbacks.on_stage("exporting", 0, 1)
    if model.ema is not None:
        model.ema.copy_to(model.parameters.values())  # the averaged weights are the result
    # A sharded model's weights gathered whole (every rank takes part); rank 0 writes the files.
    full_state = distributed.full_tensors(model.denoiser.state_dict()) if model.sharded else None
    exported = (
        export_weights(
            spec=spec,
            family=family,
            denoiser=model.denoiser,
            alpha=model.alpha,
            resolution=resolution,
            dataset_hash=fingerprint,
            weight_dtype=family.weight_dtype,
            text_encoders=model.text_encoders,
            full_state=full_state,
        )
        if ranks.main
        else None
    )
    exported = distributed.from_main(ranks, exported)  # every rank returns the files rank 0 wrote
    callbacks.on_stage("exporting", 1, 1)
    return TrainingResult(
        family=family.name,
        weights_path=exported.weights_path,
        kohya_path=exported.kohya_path,
        steps_done=spec.steps,
        final_loss=loop.loss_value,
        resumed_from_step=loop.start_step,
        captions={item.name: item.caption for item in items},
        samples=loop.samples,
        metadata=exported.metadata,
    )


def check_cancel(callbacks: TrainingCallbacks) -> None:
    if callbacks.should_cancel():
        raise TrainingCancelled()


def progress(
    step: int, total: int, loss: float, smoothed: float, scheduler: Any, elapsed: float, done: int
) -> Progress:
    remaining = (total - step) * elapsed / max(1, done)
    return Progress(
        stage="training",
        step=step,
        total_steps=total,
        loss=loss,
        smoothed_loss=smoothed,
        learning_rate=float(scheduler.get_last_lr()[0]),
        elapsed_seconds=elapsed,
        eta_seconds=math.ceil(remaining),
    )
