"""Z-Image and Z-Image-Turbo."""

from training.engine.families.zimage.family import ZImageFamily

FAMILIES = (ZImageFamily,)
