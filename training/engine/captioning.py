"""Automatic captions from a local image-to-text model (BLIP, Florence, GIT, ... saved as a folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from training.engine.errors import EngineError


class TransformersCaptioner:
    """A transformers image-to-text pipeline loaded from a local folder, used as a `Captioner`."""

    def __init__(self, model_path: str, *, device: str | None = None, max_new_tokens: int = 60) -> None:
        if not Path(model_path).is_dir():
            raise EngineError(f"the captioning model folder {model_path!r} does not exist")
        from transformers import pipeline

        try:
            # transformers 5 removed the "image-to-text" task and runs this one in its place.
            self.pipeline: Any = pipeline("image-text-to-text", model=model_path, device=device or "cpu")
        except (OSError, ValueError) as exc:
            raise EngineError(f"the captioning model at {model_path!r} cannot be loaded ({exc})") from exc
        self.max_new_tokens = max_new_tokens

    def __call__(self, image: Image.Image, prompt: str | None) -> str:
        arguments: dict[str, Any] = {"generate_kwargs": {"max_new_tokens": self.max_new_tokens}}
        if prompt:
            arguments["prompt"] = prompt
        result = self.pipeline(image, **arguments)
        return str(result[0]["generated_text"]).strip() if result else ""
