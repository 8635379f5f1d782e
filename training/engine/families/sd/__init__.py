"""Stable Diffusion 1.x and SDXL (UNets, noise prediction)."""

from training.engine.families.sd.family import SD15Family, SDXLFamily

FAMILIES = (SD15Family, SDXLFamily)
