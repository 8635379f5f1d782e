"""The dataset as the trainer sees it: each image (or before/after pair) opened, oriented, transformed,
bucketed and captioned once, before caching."""

from __future__ import annotations

import random

import numpy as np

from training.engine.data import (
    PreparedItem,
    alpha_mask,
    apply_transforms,
    bucket_crop,
    caption_for,
    decode_min_side,
    fit_to_bucket,
    make_buckets,
    nearest_bucket,
    open_upright,
    to_tensor_array,
    with_trigger,
)
from training.engine.errors import EngineError
from training.engine.families import Family
from training.engine.spec import TrainingCallbacks, TrainingSpec


def edit_mode(spec: TrainingSpec, family: Family) -> bool:
    """Whether the run learns edits: a family that learns only edits needs pairs; pairs train an edit model on a
    family that learns edits, and are refused by one that does not."""
    facts = family.facts()
    if spec.pairs and not facts.trains_pairs:
        raise EngineError(f"the {family.name} family does not learn edits: train its images without before/after pairs")
    if facts.needs_pairs and not spec.pairs:
        raise EngineError(f"the {family.name} family learns edits: the model needs before/after pairs")
    for number, pair in enumerate(spec.pairs, start=1):
        if len(pair.sources) > facts.max_sources:
            raise EngineError(
                f"pair {number} has {len(pair.sources)} source images; the {family.name} family conditions on "
                f"at most {facts.max_sources}"
            )
    return bool(spec.pairs)


def prepare_items(
    spec: TrainingSpec, family: Family, resolution: int, transforms: list, callbacks: TrainingCallbacks
) -> list[PreparedItem]:
    """Open, orient, transform, bucket and caption every image (or pair)."""
    buckets = make_buckets(resolution, family.size_multiple())
    rng = random.Random(spec.seed)
    if family.uses_pairs:
        total = len(spec.pairs)
    else:
        if not spec.images:
            raise EngineError("the dataset has no images")
        total = len(spec.images)
    decode_side = decode_min_side(resolution, transforms)
    mode = "RGBA" if spec.masked_loss else "RGB"
    items: list[PreparedItem] = []
    unmasked = 0
    for index in range(total):
        callbacks.on_stage("preprocessing", index, total)
        if family.uses_pairs:
            pair = spec.pairs[index]
            target = apply_transforms(open_upright(pair.target, min_side=decode_side, mode=mode), transforms, rng)
            bucket = nearest_bucket(target.width, target.height, buckets)
            # Every source at the target's bucket: the reference images the model conditions on.
            sources = [fit_to_bucket(open_upright(source, min_side=decode_side), bucket) for source in pair.sources]
            caption = with_trigger(pair.instruction, spec.trigger_word)
            name, picture, validation, repeats = pair.target.name, target, pair.target.validation, 1
            source_pixels: np.ndarray | None = np.stack([to_tensor_array(source) for source in sources])
        else:
            image = spec.images[index]
            picture = apply_transforms(open_upright(image, min_side=decode_side, mode=mode), transforms, rng)
            bucket = nearest_bucket(picture.width, picture.height, buckets)
            caption = caption_for(
                image,
                strategy=spec.captioning_strategy,
                trigger_word=spec.trigger_word,
                captioner=spec.captioner,
                prompt=spec.captioning_prompt,
                picture=picture.convert("RGB"),
            )
            name, validation, repeats, source_pixels = image.name, image.validation, image.repeats, None
        fitted = fit_to_bucket(picture, bucket)
        mask = alpha_mask(fitted) if spec.masked_loss else None
        unmasked += spec.masked_loss and mask is None
        items.append(
            PreparedItem(
                name=name,
                caption=caption,
                bucket=bucket,
                pixels=to_tensor_array(fitted.convert("RGB")),
                source_pixels=source_pixels,
                mask=mask,
                original_size=(picture.height, picture.width),
                crop_top_left=bucket_crop(picture.size, bucket),
                repeats=repeats,
                validation=validation,
            )
        )
    if unmasked:
        callbacks.on_log(f"masked_loss: {unmasked} of {total} images have no transparency; they are learned whole")
    callbacks.on_stage("preprocessing", total, total)
    return items


def without_pixels(items: list[PreparedItem]) -> list[PreparedItem]:
    """The items as the other ranks need them: no pixels (the cache holds the latents) but the first
    source image, which samples of edit models start from."""
    import dataclasses

    empty = np.zeros((3, 1, 1), dtype=np.float32)
    return [
        dataclasses.replace(item, pixels=empty, mask=None, source_pixels=item.source_pixels if index == 0 else None)
        for index, item in enumerate(items)
    ]


def class_caption(caption: str, spec: TrainingSpec) -> str:
    """The caption with the trigger word replaced by the class word: what the base model already knows."""
    import re

    # As `with_trigger` finds the word: any case, and a trigger such as "<zxq>" that \b cannot delimit.
    word = rf"(?<!\w){re.escape(spec.trigger_word)}(?!\w)"
    replaced = re.sub(word, spec.prior_preservation_class or "", caption, flags=re.IGNORECASE)
    return " ".join(replaced.replace(" ,", ",").split()).strip(", ")
