"""HiDream-I1 (Full, Dev, Fast)."""

from training.engine.families.hidream.family import HiDreamFamily

FAMILIES = (HiDreamFamily,)
