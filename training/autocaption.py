"""The worker side of the admin's "auto-caption all": caption a model's images with the local captioning
model (TRAINING_CAPTION_MODEL) and hand the captions to the service that stores them.

It runs on the training workers, which hold the captioning model (and the GPU), never in a web process.
"""

from __future__ import annotations

import logging

from django.conf import settings
from PIL import Image, ImageOps

from models_app.models import Model
from models_app.services.datasets import training_images_automatic_captions_store
from training.engine.errors import EngineError
from training.runner import local_captioner

logger = logging.getLogger(__name__)


def caption_model_images(model_id: int) -> str:
    """Caption every image of the model, prompted like a training's `automatic` strategy
    (`preprocessing_captioning_prompt`), then store them; a summary for django-q2's result."""
    model = Model.objects.get(pk=model_id)
    captioner = local_captioner()
    if captioner is None:
        raise EngineError("no captioning model is configured on this worker (set TRAINING_CAPTION_MODEL)")
    prompt = model.parameters.get("preprocessing_captioning_prompt") or None
    captions: dict[str, str] = {}
    for image in model.training_images.select_related("asset"):
        with image.asset.file.open("rb") as handle, Image.open(handle) as opened:
            captions[image.public_id] = captioner(ImageOps.exif_transpose(opened).convert("RGB"), prompt)
    filled = training_images_automatic_captions_store(model=model, captions=captions)
    logger.info(
        "captioned %d images of %s with %s; %d empty captions filled",
        len(captions),
        model.public_id,
        settings.TRAINING_CAPTION_MODEL,
        len(filled),
    )
    return f"{len(captions)} images captioned, {len(filled)} empty captions filled"
