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


def test_qwen_image_21_reads_images_through_qwen3_vls_processor_without_its_video_part(
    tiny_models: dict[str, Path],
) -> None:
    """Qwen-Image 2.1's pipeline builds, with our processor, from a folder naming the stock Qwen3VLProcessor; the
    processor's image tensors are the real image processor's; and the pipeline takes an image (its conditioning)."""
    from transformers import Qwen3VLProcessor

    base = tiny_models["qwenimage21"]
    index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    assert index["processor"] == ["transformers", "Qwen3VLProcessor"]
    pipeline = load_pipeline(str(base), device=torch.device("cpu"))
    processor = pipeline.processor
    assert isinstance(processor, Qwen3VLProcessor) and not hasattr(processor, "video_processor")
    picture = image(256, 256, 5)
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>x"], images=[picture], return_tensors="pt")
    direct = processor.image_processor(images=[picture], return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], direct["pixel_values"])
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]  # 16 px patches: no resize at 64K pixels
    with torch.no_grad():
        result = pipeline(
            # At 256 px the condition image is inside the processor's published pixel range, so its slots match
            # the VAE's tokens (a smaller one the processor would enlarge).
            prompt="make it red",
            image=picture,
            height=64,
            width=64,
            num_inference_steps=2,
            output_resolution=256,
        ).images[0]
    assert result.size == (64, 64)


def test_qwen_image_21_trains_on_what_its_pipeline_feeds_the_transformer(tiny_models: dict[str, Path]) -> None:
    """The family's caption encoding is the pipeline's, and its prediction (the caption then the target's 2x2 slots,
    read on the last tokens) is the pipeline's own transformer call on the same noisy latents."""
    from training.engine.families.base import NoisedBatch
    from training.engine.families.qwenimage21.family import QwenImage21Family

    base = str(tiny_models["qwenimage21"])
    pipeline = load_pipeline(base, device=torch.device("cpu"))
    family = QwenImage21Family(base, torch.device("cpu"), torch.float32)
    family.processor, family.text_encoder = pipeline.processor, pipeline.text_encoder
    conditioning = family.encode_prompts(["zxq, a disc", "a much longer caption than the first one"])
    noisy = torch.randn(1, pipeline.transformer.config.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([0.6])
    with torch.no_grad():
        ours = family.predict(
            pipeline.transformer,
            NoisedBatch(noisy=noisy, timesteps=timesteps, target=noisy),
            {key: value[:1] for key, value in conditioning.items()},
            None,  # type: ignore[arg-type]  # unused by this family's predict
        )
        embeds, mask, slots = pipeline.encode_prompt(prompt="zxq, a disc", device=torch.device("cpu"))
        slots = torch.cat([slots, torch.ones(1, 4, dtype=torch.bool)], dim=1)  # the target's four 2x2 slots
        theirs = pipeline.transformer(
            hidden_states=noisy.flatten(2).transpose(1, 2), timestep=timesteps, encoder_hidden_states=embeds,
            encoder_hidden_states_mask=mask, img_shapes=[[(1, 4, 4)]], img_mask=slots, return_dict=False,
        )[0][:, -16:]  # fmt: skip
    # (Read in a batch of two, left-padded as the pipeline pads: equal up to float rounding.)
    assert torch.allclose(conditioning["prompt_embeds"][0, : embeds.shape[1]], embeds[0], atol=1e-5)
    assert torch.allclose(ours, theirs.transpose(1, 2).reshape(ours.shape), atol=1e-6)
