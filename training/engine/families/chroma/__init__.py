"""Chroma (FLUX.1-schnell's layout with T5 alone)."""

from training.engine.families.chroma.family import ChromaFamily

FAMILIES = (ChromaFamily,)
