"""Qwen-VL processors without a video processor (training/engine/vl_processors.py): the real transformers
classes, built without the torchvision lookup, reading images exactly as the real image processor does, saved
under the stock names; and the edit pipeline's prompt read as the pipeline reads it, with the positions the
pipeline's own encoding leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.engine.generate import load_pipeline

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass


def image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_the_processor_is_qwens_own_without_its_video_part(tiny_models: dict[str, Path]) -> None:
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    base = tiny_models["qwenimage-edit"]
    index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]  # stock names, loadable with torchvision
    config = json.loads((base / "processor" / "processor_config.json").read_text(encoding="utf-8"))
    assert config["processor_class"] == "Qwen2VLProcessor" and "video_processor" in config

    processor = load_pipeline(str(base), device=torch.device("cpu")).processor
    assert isinstance(processor, Qwen2VLProcessor) and not hasattr(processor, "video_processor")
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
    pictures = [image(384, 384, 1), image(320, 448, 2)]
    text = (
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|><|image_pad|><|vision_end|>x"
    )
    inputs = processor(text=[text], images=pictures, return_tensors="pt")
    direct = processor.image_processor(images=pictures, return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], direct["pixel_values"])
    assert torch.equal(inputs["image_grid_thw"], direct["image_grid_thw"])
    pads = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert pads == int(direct["image_grid_thw"].prod(dim=1).sum()) // 4  # each slot widened to its merged patches
    assert int(inputs["mm_token_type_ids"].sum()) == pads


def test_the_edit_prompt_is_read_as_the_pipeline_reads_it_with_image_positions(tiny_models: dict[str, Path]) -> None:
    """Our encoding is the pipeline's (template, "Picture N:" slots, 384 px condition images, 64 tokens cut) once
    the pipeline's text encoder is given the image tokens' `mm_token_type_ids`; without them (the pipeline as
    published, diffusers issue 14194) the image tokens get other positions and the encoding differs."""
    from training.engine.families.qwenimage_edit.family import encode_instruction

    pipeline = load_pipeline(str(tiny_models["qwenimage-edit"]), device=torch.device("cpu"))
    sources = [image(96, 128, 3), image(128, 128, 4)]
    ours = encode_instruction(
        pipeline.processor, pipeline.text_encoder, pipeline.prompt_template_encode,
        pipeline.prompt_template_encode_start_idx, "make it red", sources,
    )  # fmt: skip
    assert ours.shape[0] > 2 * 100  # two images' tokens and the instruction's, past the 64 cut

    def as_published() -> torch.Tensor:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
            CONDITION_IMAGE_SIZE,
            calculate_dimensions,
        )

        conditions = []
        for picture in sources:
            width, height = calculate_dimensions(CONDITION_IMAGE_SIZE, picture.width / picture.height)
            conditions.append(pipeline.image_processor.resize(picture, height, width))
        with torch.no_grad():
            embeds, _ = pipeline.encode_prompt(prompt="make it red", image=conditions, device=torch.device("cpu"))
        return embeds[0]

    encoder, image_token = pipeline.text_encoder, pipeline.text_encoder.config.image_token_id
    published = as_published()
    original = encoder.forward

    def with_positions(*args, **kwargs):  # what the pipeline leaves out, derived from its own token ids
        kwargs.setdefault("mm_token_type_ids", (kwargs["input_ids"] == image_token).long())
        return original(*args, **kwargs)

    encoder.forward = with_positions
    try:
        fixed = as_published()
    finally:
        encoder.forward = original
    assert torch.allclose(ours, fixed.float(), atol=1e-6)
    assert not torch.allclose(ours, published.float(), atol=1e-4)
