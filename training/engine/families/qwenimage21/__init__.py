"""Qwen-Image 2.1."""

from training.engine.families.qwenimage21.family import QwenImage21Family

FAMILIES = (QwenImage21Family,)
