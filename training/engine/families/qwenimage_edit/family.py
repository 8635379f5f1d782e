"""Qwen-Image-Edit 2509 and 2511 (`QwenImageEditPlusPipeline`): Qwen-Image's 20 B transformer trained to edit.
It learns from before/after pairs only: a pair's sources (up to three) are read twice, by Qwen2.5-VL with
the instruction (each at about 384x384 pixels, "Picture N:" before it, inside the pipeline's edit template
whose first 64 tokens are cut) and by the VAE, whose tokens follow the target's in the transformer, each its
own entry of `img_shapes`. 2511 sets the transformer's `zero_cond_t`: the reference tokens are modulated as
at time 0; that is the transformer's own doing, from the same `img_shapes`.

The pipeline's own prompt encoding does not pass `mm_token_type_ids` to Qwen2.5-VL, which transformers 5
needs to give image tokens their 3-D rotary positions (diffusers issue 14194): training and generation here
encode the prompt with it, through the same function, and hand the pipeline the embeddings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from PIL import Image

from training.engine.families.qwenimage.family import QwenImageFamily

PROCESSOR = "training.engine.vl_processors.Qwen2VLProcessorWithoutVideo"
# How QwenImageEditPlusPipeline names each image before the instruction (its `_get_qwen_prompt_embeds`).
IMAGE_SLOT = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"


def edit_template() -> tuple[str, int]:
    """The edit pipeline's prompt template and how many opening tokens it cuts (set by its constructor)."""
    from diffusers import QwenImageEditPlusPipeline

    empty: Any = QwenImageEditPlusPipeline(None, None, None, None, None, None)  # no components needed
    return str(empty.prompt_template_encode), int(empty.prompt_template_encode_start_idx)


def condition_image(image: Image.Image) -> Image.Image:
    """The source as Qwen2.5-VL reads it: resized to about 384x384 pixels (sides multiples of 32) at its own
    aspect, as the pipeline resizes it."""
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions

    width, height = calculate_dimensions(CONDITION_IMAGE_SIZE, image.width / image.height)
    resized: Image.Image = VaeImageProcessor(vae_scale_factor=16).resize(image.convert("RGB"), height, width)
    return resized


@torch.no_grad()
def encode_instruction(
    processor: Any, text_encoder: Any, template: str, drop: int, prompt: str, images: list[Image.Image]
) -> torch.Tensor:
    """(tokens, width): the instruction read with its images by Qwen2.5-VL, as the pipeline reads it, with the
    image tokens' `mm_token_type_ids` passed."""
    text = template.format("".join(IMAGE_SLOT.format(index + 1) for index in range(len(images))) + prompt)
    device = next(text_encoder.parameters()).device
    inputs = processor(
        text=[text], images=[condition_image(image) for image in images] or None, padding=True, return_tensors="pt"
    ).to(device)
    hidden = text_encoder(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs.get("pixel_values"),
        image_grid_thw=inputs.get("image_grid_thw"),
        mm_token_type_ids=inputs.get("mm_token_type_ids"),
        output_hidden_states=True,
    ).hidden_states[-1]
    embeds: torch.Tensor = hidden[0][inputs["attention_mask"][0].bool()][drop:]
    return embeds


class QwenImageEditFamily(QwenImageFamily):
    name = "qwenimage-edit"
    pipeline_class = "QwenImageEditPlusPipeline"
    tokenizer_classes = {"tokenizer": "AutoTokenizer", "processor": PROCESSOR}
    captions_see_sources = True
    processor: Any

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.template, self.caption_offset = edit_template()

    def encode_prompts_seeing(self, prompts: list[str], sources: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
        rows = [
            encode_instruction(self.processor, self.text_encoder, self.template, self.caption_offset, prompt, images)
            for prompt, images in zip(prompts, sources, strict=True)
        ]
        width = max(row.shape[0] for row in rows)
        embeds = torch.zeros(len(rows), width, rows[0].shape[-1])
        mask = torch.zeros(len(rows), width)
        for index, row in enumerate(rows):
            embeds[index, : row.shape[0]] = row.float().cpu()
            mask[index, : row.shape[0]] = 1.0
        return {"prompt_embeds": embeds, "text_mask": mask}

    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        """The sources as the pipeline's `image`, and the prompt (and any negative one) encoded with them here,
        with `mm_token_type_ids`, handed over as embeddings."""
        if image is None:
            return  # the pipeline says an edit model needs its image
        images = image if isinstance(image, list) else [image]
        arguments["image"] = images
        template, drop = pipeline.prompt_template_encode, pipeline.prompt_template_encode_start_idx
        for prefix in ("", "negative_"):
            prompt = arguments.pop(f"{prefix}prompt", None)
            if prompt is None:
                continue
            embeds = encode_instruction(pipeline.processor, pipeline.text_encoder, template, drop, prompt, images)
            arguments[f"{prefix}prompt_embeds"] = embeds[None]
            arguments[f"{prefix}prompt_embeds_mask"] = torch.ones(1, embeds.shape[0], dtype=torch.long)

    @classmethod
    def generation_scope(cls, pipeline: Any, arguments: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        return reference_area(arguments["width"] * arguments["height"])


@contextlib.contextmanager
def reference_area(pixels: int) -> Iterator[None]:
    """The pipeline resizes every reference image to about a megapixel for its VAE (a module constant, not an
    argument); training sees the sources at the target's size. For the call, the references take the output's
    area: the same at 1024 px, where the model was made, and the size trained at below it."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    published = module.VAE_IMAGE_SIZE
    module.VAE_IMAGE_SIZE = pixels
    try:
        yield
    finally:
        module.VAE_IMAGE_SIZE = published
