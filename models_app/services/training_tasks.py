"""Seed 003's `POST /training/`: one call that names the images, creates (or reuses) the model, and starts."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from models_app.errors import InvalidInput
from models_app.models import Model, Team, TrainingTask
from models_app.selectors import model_get_by_uuid
from models_app.services.datasets import model_create, training_images_add
from models_app.services.image_sources import source_from_reference
from models_app.services.training import ORIGIN_FIELDS, training_start

# TrainingTaskCreate fields that are training parameters (None means: the default).
PARAMETER_FIELDS = (
    "training_type",
    "rank",
    "steps",
    "learning_rate",
    "sample_prompts",
    "base_model_path",
    "bypass_guidance_embedding",
    "webhook_url",
    "preprocessing_transforms",
    "preprocessing_captioning_strategy",
    "preprocessing_captioning_prompt",
)


def training_task_create(*, team: Team, data: dict[str, Any]) -> TrainingTask:
    """Add `source_images` to the model named by `entity_id` (or a new one) and start its training.

    Either everything happens or nothing: a bad image, a count out of bounds or a refused start
    leaves no model, no image and no file behind.
    """
    model = model_get_by_uuid(team=team, value=data["entity_id"]) if data.get("entity_id") else None
    references = data.get("source_images") or []
    if model is None and not references:
        raise InvalidInput("source_images is required when entity_id names no existing model", field="source_images")
    sources = [
        source_from_reference(team=team, value=value, field=f"source_images[{index}]")
        for index, value in enumerate(references)
    ]
    overrides = {name: data[name] for name in PARAMETER_FIELDS if data.get(name) is not None}
    origin = {name: data.get(name) for name in ORIGIN_FIELDS}
    new_files: list[str | None] = []
    try:
        with transaction.atomic():
            if model is None:
                entity_type = data.get("entity_type") or TrainingTask.EntityType.PRODUCT
                model = model_create(
                    team=team,
                    name=f"{entity_type.title()} {data['trigger_word']}",
                    type=entity_type.lower(),
                    trigger_word=data["trigger_word"],
                )
            elif data["trigger_word"] and data["trigger_word"] != model.trigger_word:
                Model.objects.filter(pk=model.pk).update(trigger_word=data["trigger_word"])
                model.trigger_word = data["trigger_word"]
            if sources:
                images = training_images_add(model=model, sources=sources, field="source_images")
                new_files = [
                    image.asset.file.name for image, source in zip(images, sources, strict=True) if source.asset is None
                ]
            try:
                task = training_start(model=model, overrides=overrides, origin=origin)
            except InvalidInput as exc:
                if exc.field != "training_images":
                    raise
                # Here the model's images are the request's source_images: the error names that field.
                raise InvalidInput(exc.message, field="source_images", extra=exc.extra) from exc
            if data.get("entity_type"):
                TrainingTask.objects.filter(pk=task.pk).update(entity_type=data["entity_type"])
                task.entity_type = data["entity_type"]
            return task
    except BaseException:
        from django.core.files.storage import default_storage

        for name in filter(None, new_files):
            default_storage.delete(name)
        raise
