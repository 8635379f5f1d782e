"""Qwen-Image."""

from training.engine.families.qwenimage.family import QwenImageFamily

FAMILIES = (QwenImageFamily,)
