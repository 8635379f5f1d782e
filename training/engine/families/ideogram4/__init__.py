"""Ideogram 4."""

from training.engine.families.ideogram4.family import Ideogram4Family

FAMILIES = (Ideogram4Family,)
