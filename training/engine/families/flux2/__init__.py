"""FLUX.2: klein (4 B, 9 B) and dev."""

from training.engine.families.flux2.family import Flux2Family, Flux2KleinFamily

FAMILIES = (Flux2KleinFamily, Flux2Family)
