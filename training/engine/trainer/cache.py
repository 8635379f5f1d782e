"""What the denoiser trains on, computed once and kept on disk: the images' latent distributions (and their
flips, masks and SDXL size conditioning) and the captions' encodings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from training.engine import distributed
from training.engine.data import PreparedItem, dataset_fingerprint, flip_probability, to_picture
from training.engine.errors import EngineError
from training.engine.families import Family
from training.engine.spec import TrainingCallbacks, TrainingSpec
from training.engine.trainer.dataset import class_caption, prepare_items, without_pixels


@dataclass
class Cache:
    """What the denoiser trains on, computed once: latent distributions and prompt embeddings."""

    means: list[torch.Tensor]
    stds: list[torch.Tensor]
    flipped_means: list[torch.Tensor] | None
    flipped_stds: list[torch.Tensor] | None
    source_means: list[torch.Tensor] | None
    flipped_source_means: list[torch.Tensor] | None
    prompts: dict[str, torch.Tensor]  # row 0 is the unconditional input, used for caption dropout
    caption_rows: list[int]
    buckets: list[tuple[int, int]]
    masks: list[torch.Tensor] | None = None  # (1, h, w) loss weights at latent size (masked loss)
    flipped_masks: list[torch.Tensor] | None = None
    time_ids: list[torch.Tensor] | None = None  # SDXL: original size, crop and target size per image
    flipped_time_ids: list[torch.Tensor] | None = None
    class_rows: list[int] | None = None  # prior preservation: each caption with the class word for the trigger
    prompt_tokens: dict[str, torch.Tensor] | None = None  # token ids per text encoder, when those are trained


def load_or_build_cache(
    spec: TrainingSpec,
    family: Family,
    items: list[PreparedItem],
    fingerprint: str,
    with_flips: bool,
    callbacks: TrainingCallbacks,
    *,
    build: bool = True,
) -> Cache:
    """The cache of this dataset, read from the disk or built (`build`: rank 0's part; the other ranks
    only read what it wrote, their items have no pixels)."""
    path = spec.cache_dir / f"cache-{fingerprint}-{'flip' if with_flips else 'plain'}.pt"
    if path.is_file():
        try:
            cache = Cache(**torch.load(path, weights_only=False))
            callbacks.on_log(f"reusing cached latents and embeddings ({path.name})")
            return cache
        except (OSError, RuntimeError, TypeError, EOFError):
            if not build:
                raise
            path.unlink(missing_ok=True)
    if not build:
        raise EngineError(f"the cache {path.name} written by rank 0 is missing")
    callbacks.on_stage("caching", 0, len(items))
    family.load_encoders()

    def encode(array: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = family.encode_pixels(torch.from_numpy(array).unsqueeze(0))
        return mean[0], std[0]

    def latent_mask(mask: np.ndarray | None) -> torch.Tensor:
        if mask is None:
            return torch.ones(1, means[-1].shape[-2], means[-1].shape[-1])
        return F.adaptive_avg_pool2d(
            torch.from_numpy(mask.copy())[None, None], (means[-1].shape[-2], means[-1].shape[-1])
        )[0]

    means, stds, flipped_means, flipped_stds, source_means, flipped_source = [], [], [], [], [], []
    masks, flipped_masks, time_ids, flipped_time_ids = [], [], [], []
    for index, item in enumerate(items):
        mean, std = encode(item.pixels)
        means.append(mean)
        stds.append(std)
        masks.append(latent_mask(item.mask))
        top, left = item.crop_top_left
        height, width = item.bucket[1], item.bucket[0]
        time_ids.append(torch.tensor([*item.original_size, top, left, height, width], dtype=torch.float32))
        # A flipped image's crop is mirrored: the same distance from the other edge.
        mirrored = round(item.original_size[1] * max(width / item.original_size[1], height / item.original_size[0]))
        flipped_time_ids.append(
            torch.tensor(
                [*item.original_size, top, max(0, mirrored - width - left), height, width], dtype=torch.float32
            )
        )
        if with_flips:
            mean, std = encode(item.pixels[:, :, ::-1].copy())
            flipped_means.append(mean)
            flipped_stds.append(std)
            flipped_masks.append(masks[-1].flip(-1))
        if item.source_pixels is not None:
            # (sources, C, h, w): each conditioning image's latent mean.
            source_means.append(torch.stack([encode(source)[0] for source in item.source_pixels]))
            if with_flips:
                flipped_source.append(
                    torch.stack([encode(source[:, :, ::-1].copy())[0] for source in item.source_pixels])
                )
        callbacks.on_stage("caching", index + 1, len(items))
    item_captions = sorted({item.caption for item in items})
    class_captions = {}
    if spec.prior_preservation_class:
        class_captions = {caption: class_caption(caption, spec) for caption in item_captions}
    captions = ["", *sorted(set(item_captions) | set(class_captions.values()))]
    rows = {caption: row for row, caption in enumerate(captions)}
    for prompt, count, limit in family.long_prompts(captions):
        callbacks.on_log(
            f"caption longer than the text encoder reads ({count} tokens, {limit} read; the rest is ignored, "
            f"as at generation): {prompt[:80]!r}"
        )
    tokens = family.tokenize(captions) if spec.train_text_encoder else None
    encoded: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(captions), 8):
        for key, tensor in family.encode_prompts(captions[start : start + 8]).items():
            encoded.setdefault(key, []).append(tensor)
    caption_rows = [rows[item.caption] for item in items]
    if family.uses_pairs and family.captions_see_sources:
        # The text encoder reads each pair's source images with its instruction (Qwen-Image-Edit's VL does):
        # one row per pair, after the text-only rows (the empty caption, for dropout, among them).
        if class_captions:
            raise EngineError(f"prior_preservation_class does not apply to {family.name}'s edit pairs")
        caption_rows = []
        for item in items:
            if item.source_pixels is None:
                raise EngineError("an edit pair lost its source images before caching")
            sources = [to_picture(source) for source in item.source_pixels]
            caption_rows.append(len(captions) + len(caption_rows))
            for key, tensor in family.encode_prompts_seeing([item.caption], [sources]).items():
                encoded[key].append(tensor)
    family.release_encoders()
    prompts = {key: cat_padded(parts) for key, parts in encoded.items()}
    unconditional = family.unconditional({key: value[:1] for key, value in prompts.items()})
    for key, value in unconditional.items():
        prompts[key][:1] = value
    cache = Cache(
        means=means,
        stds=stds,
        flipped_means=flipped_means if with_flips else None,
        flipped_stds=flipped_stds if with_flips else None,
        source_means=source_means or None,
        flipped_source_means=flipped_source or None,
        prompts=prompts,
        caption_rows=caption_rows,
        buckets=[item.bucket for item in items],
        masks=masks if spec.masked_loss else None,
        flipped_masks=flipped_masks if spec.masked_loss and with_flips else None,
        time_ids=time_ids if family.conditions_on_sizes else None,
        flipped_time_ids=flipped_time_ids if family.conditions_on_sizes else None,
        class_rows=[rows[class_captions[item.caption]] for item in items] if class_captions else None,
        prompt_tokens=tokens,
    )
    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(cache.__dict__, partial)
    partial.replace(path)
    return cache


def cache_on(cache: Cache, device: torch.device) -> Cache:
    """The cache with every tensor moved to `device` once, before the loop."""

    def move(tensors: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        return None if tensors is None else [tensor.to(device) for tensor in tensors]

    return Cache(
        means=move(cache.means) or [],
        stds=move(cache.stds) or [],
        flipped_means=move(cache.flipped_means),
        flipped_stds=move(cache.flipped_stds),
        source_means=move(cache.source_means),
        flipped_source_means=move(cache.flipped_source_means),
        prompts={key: value.to(device) for key, value in cache.prompts.items()},
        caption_rows=cache.caption_rows,
        buckets=cache.buckets,
        masks=move(cache.masks),
        flipped_masks=move(cache.flipped_masks),
        time_ids=move(cache.time_ids),
        flipped_time_ids=move(cache.flipped_time_ids),
        class_rows=cache.class_rows,
        prompt_tokens=None
        if cache.prompt_tokens is None
        else {k: v.to(device) for k, v in cache.prompt_tokens.items()},
    )


def prepare_dataset(
    spec: TrainingSpec,
    family: Family,
    resolution: int,
    transforms: list,
    callbacks: TrainingCallbacks,
    ranks: distributed.Ranks,
) -> tuple[list[PreparedItem], str, Cache]:
    """The prepared items, the dataset's fingerprint and its cache: built by rank 0; the other ranks read its
    cache and get the items without their pixels."""
    items: list[PreparedItem] = []
    fingerprint = ""
    flips = flip_probability(transforms) > 0
    if ranks.main:
        items = prepare_items(spec, family, resolution, transforms, callbacks)
        fingerprint = dataset_fingerprint(spec, family.name, resolution, items)
        cache = load_or_build_cache(spec, family, items, fingerprint, flips, callbacks)
    if ranks.active:
        # A broadcast after rank 0's cache is written: the other ranks then find it on the disk.
        shared = distributed.from_main(ranks, (without_pixels(items), fingerprint) if ranks.main else None)
        if not ranks.main:
            items, fingerprint = shared
            cache = load_or_build_cache(spec, family, items, fingerprint, flips, callbacks, build=False)
    return items, fingerprint, cache


def cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """The chunks' rows in one tensor. A family that keeps each caption at its own length (with a mask) encodes
    each chunk as wide as its longest caption: narrower chunks are zero-padded to the widest (masked out)."""
    width = max(part.shape[1] for part in parts) if parts[0].dim() > 1 else 0
    padded = [
        F.pad(part, (*[0, 0] * (part.dim() - 2), 0, width - part.shape[1])) if part.dim() > 1 else part
        for part in parts
    ]
    return torch.cat(padded)
