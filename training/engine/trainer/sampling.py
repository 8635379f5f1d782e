"""Samples during training: images for the sample prompts through the same pipeline code as the API's
generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.engine import distributed
from training.engine.data import PreparedItem, to_picture
from training.engine.families import Family
from training.engine.generate import load_pipeline, run_pipeline
from training.engine.spec import TrainingCallbacks, TrainingSpec


def take_samples(
    spec: TrainingSpec,
    family: Family,
    denoiser: torch.nn.Module,
    items: list[PreparedItem],
    step: int,
    resolution: int,
    callbacks: TrainingCallbacks,
    text_encoders: dict[str, torch.nn.Module] | None = None,
    *,
    ranks: distributed.Ranks = distributed.SINGLE,
) -> list[Path]:
    """Images for the sample prompts, through the same pipeline code as the API's generations. Every
    rank runs the pipeline (a sharded model's forward needs them all); rank 0 keeps the images."""
    from PIL import Image

    denoiser.eval()
    components: dict[str, Any] = {family.denoiser_key: denoiser, **(text_encoders or {})}
    for encoder in (text_encoders or {}).values():
        encoder.eval()
    pipeline = load_pipeline(spec.base_model, device=family.device, components=components)
    folder = spec.output_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    sources: list[Image.Image] = []
    width = height = resolution
    if family.uses_pairs and items and items[0].source_pixels is not None:
        # An edit model's samples edit the first pair's source images, at their size.
        sources = [to_picture(pixels) for pixels in items[0].source_pixels]
        width, height = sources[0].size
    paths = []
    for index, prompt in enumerate(spec.sample_prompts):
        image = run_pipeline(
            pipeline,
            prompt=prompt,
            width=width,
            height=height,
            steps=spec.sample_steps,
            seed=spec.seed + index,
            image=sources or None,
            bypass_guidance_embedding=spec.bypass_guidance_embedding,
        )[0]
        if sources:
            image = side_by_side([*sources, image])  # what was edited, then the edit
        path = folder / f"step-{step:07d}-{index}.png"
        if ranks.main:
            image.save(path)
            paths.append(path)
            callbacks.on_sample(step, prompt, path)
    del pipeline
    denoiser.train()
    for encoder in (text_encoders or {}).values():
        encoder.train()
    return paths


def side_by_side(images: list[Any]) -> Any:
    """The images in a row, each at the first one's height."""
    from PIL import Image

    height = images[0].height
    scaled = [image.resize((round(image.width * height / image.height), height)) for image in images]
    row = Image.new("RGB", (sum(image.width for image in scaled), height), "white")
    left = 0
    for image in scaled:
        row.paste(image.convert("RGB"), (left, 0))
        left += image.width
    return row
