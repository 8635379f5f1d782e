"""Stable Diffusion 3.5 (large and medium)."""

from training.engine.families.sd3.family import SD3Family

FAMILIES = (SD3Family,)
