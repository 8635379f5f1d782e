"""Qwen-Image-Edit (2509, 2511): edit models from before/after pairs."""

from training.engine.families.qwenimage_edit.family import QwenImageEditFamily

FAMILIES = (QwenImageEditFamily,)
