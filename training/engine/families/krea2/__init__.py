"""Krea 2 (Krea 2 Raw and Krea 2 Turbo)."""

from training.engine.families.krea2.family import Krea2Family

FAMILIES = (Krea2Family,)
