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
        """The caption the model writes for the image, started from `prompt` when one is given (BLIP's
        "a photo of", Florence's "<MORE_DETAILED_CAPTION>"); the prompt itself is not repeated.

        transformers 5's pipeline needs `text` for every call (an empty one for a plain caption) and
        returns the prompt with the generated words unless told not to.
        """
        result = self.pipeline(
            images=image,
            text=prompt or "",
            return_full_text=False,
            generate_kwargs={"max_new_tokens": self.max_new_tokens},
        )
        return " ".join(str(result[0]["generated_text"]).split()) if result else ""
