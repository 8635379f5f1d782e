"""Qwen-VL processors for images and text, without the video processor.

Qwen's edit pipelines (`QwenImageEditPlusPipeline`) and Qwen-Image 2.1 read their conditioning images
through a Qwen2-VL or Qwen3-VL processor. transformers builds those processors with their video
processor, and a video processor needs torchvision; PyPI's torchvision wheels link torch's CUDA
libraries and do not load beside the CPU build of torch these machines run (`operator torchvision::nms
does not exist`). Neither pipeline reads videos.

transformers derives a processor's parts from its constructor's parameters
(`ProcessorMixin.get_attributes`), so a subclass whose constructor takes no `video_processor` is a
processor of images and text: the real image processor (the Pillow backend, `Qwen2VLImageProcessorPil`,
which `AutoImageProcessor` picks where torchvision is missing) and the real processor's text expansion
(each `<|image_pad|>` widened to the image's merged patches, `mm_token_type_ids`). Nothing is written by
hand: what differs from the stock class is that it never looks its video processor up. On a machine with
torchvision the stock classes would give the same image tensors up to the resampling backend (Pillow
against torchvision's bicubic), which is why the Pillow one is used everywhere, for training and
generation alike.

A folder holding one of these is saved under the stock class's name (`stock_names`), so that stock
transformers and diffusers load it where torchvision exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import Qwen2VLProcessor, Qwen3VLProcessor


class Qwen2VLProcessorWithoutVideo(Qwen2VLProcessor):
    """Qwen2VLProcessor (Qwen2-VL, Qwen2.5-VL) for images and text only."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )


class Qwen3VLProcessorWithoutVideo(Qwen3VLProcessor):
    """Qwen3VLProcessor (Qwen3-VL) for images and text only."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )


STOCK = {
    Qwen2VLProcessorWithoutVideo.__name__: ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
    Qwen3VLProcessorWithoutVideo.__name__: ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}


def stock_names(pipeline_folder: Path, component: str = "processor") -> None:
    """Rewrite a saved pipeline's processor entries to the stock class (diffusers records the subclass's
    module, which no other machine could import), with the video processor's settings beside the image
    processor's, as the published folders have them."""
    index_path = pipeline_folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    _, name = index[component]
    processor, video = STOCK.get(name, (name, None))
    index[component] = ["transformers", processor]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    config_path = pipeline_folder / component / "processor_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["processor_class"] = processor
    if video is not None and "image_processor" in config:
        config.setdefault("video_processor", {**config["image_processor"], "video_processor_type": video})
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
