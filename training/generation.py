"""Generation with a trained model: the trained LoRA on its base model, images stored as assets."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

from django.conf import settings
from PIL import Image

from models_app.errors import ApplicationError, Conflict
from models_app.models import Asset, GenerationJob, Model
from models_app.services.assets import asset_create
from models_app.services.generation import (
    generation_job_claim,
    generation_job_complete,
    generation_job_fail,
    generation_job_heartbeat,
    generation_job_release,
)
from models_app.services.worker_protocol import LeaseLost
from training.engine.errors import EngineError
from training.engine.generate import generate
from training.lease import Heartbeat, worker_identity
from training.storage_io import local_copy, stored_name

logger = logging.getLogger(__name__)


def generate_with_model(
    *,
    model: Model,
    prompt: str,
    width: int | None = None,
    height: int | None = None,
    steps: int = 25,
    seed: int = 0,
    num_images: int = 1,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    source_image: Asset | None = None,
) -> list[Asset]:
    task = model.trained_task
    if model.status != Model.Status.READY or task is None or not task.weights:
        raise Conflict(f"model {model.public_id} is {model.status}; it must be ready to generate")
    with tempfile.TemporaryDirectory(dir=_scratch_dir()) as scratch:
        weights = local_copy(task.weights, Path(scratch) / Path(stored_name(task.weights)).name)
        picture = None
        if source_image is not None:
            with source_image.file.open("rb") as handle:
                picture = Image.open(io.BytesIO(handle.read())).convert("RGB")
        images = generate(
            base_model=task.base_model_path,
            prompt=prompt,
            lora_path=weights,
            width=width,
            height=height,
            steps=steps,
            seed=seed,
            num_images=num_images,
            negative_prompt=negative_prompt or None,
            guidance_scale=guidance_scale,
            image=picture,
            device=settings.TRAINING_DEVICE,
        )
    assets = []
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        assets.append(
            asset_create(
                team=model.team,
                project=model.project,
                content=buffer.getvalue(),
                name=f"{model.public_id}-{seed}-{index}.png",
                kind=Asset.Kind.GENERATED,
            )
        )
    return assets


def _scratch_dir() -> Path:
    path = Path(settings.TRAINING_WORK_DIR) / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


class GenerationLease(Heartbeat):
    """The training heartbeat's rules (retries, giving up, bounded shutdown) for a generation job's lease."""

    def renew(self) -> bool:
        return generation_job_heartbeat(job_id=self.task_id, worker_id=self.worker_id)

    def release(self) -> None:
        generation_job_release(job_id=self.task_id, worker_id=self.worker_id)


def run_generation_job(job_id: str) -> str:
    """The worker side of a generation job: claim it, generate, store the images, record the outcome."""
    worker_id = worker_identity()
    job = generation_job_claim(job_id=job_id, worker_id=worker_id)
    if job is None:
        return "not-claimed"
    created: list[Asset] = []
    try:
        with GenerationLease(job.pk, worker_id) as lease:
            created = generate_with_model(
                model=job.model,
                prompt=job.prompt,
                width=job.width,
                height=job.height,
                steps=job.steps,
                seed=job.seed,
                num_images=job.num_images,
                negative_prompt=job.negative_prompt,
                guidance_scale=job.guidance_scale,
                source_image=job.source_image,
            )
        if lease.lost:
            raise LeaseLost(lease.lost_reason)
    except LeaseLost:
        for asset in created:  # the reaper gave the job to another worker: these images are not published
            asset.file.delete(save=False)
            asset.delete()
        return "not-claimed"
    except (ApplicationError, EngineError) as exc:
        generation_job_fail(job=job, worker_id=worker_id, message=str(exc))
        return GenerationJob.Status.FAILED
    except Exception as exc:
        logger.exception("generation job %s crashed", job_id)
        generation_job_fail(job=job, worker_id=worker_id, message=f"internal error: {type(exc).__name__}: {exc}")
        return GenerationJob.Status.FAILED
    if not generation_job_complete(job=job, worker_id=worker_id, assets=created):
        for asset in created:  # cancelled meanwhile, or taken from this worker: the images are not published
            asset.file.delete(save=False)
            asset.delete()
        job.refresh_from_db(fields=["status"])
        return job.status if job.status == GenerationJob.Status.CANCELED else "not-claimed"
    return GenerationJob.Status.COMPLETED
