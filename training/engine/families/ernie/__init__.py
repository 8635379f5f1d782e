"""ERNIE-Image (Baidu): ERNIE-Image and ERNIE-Image-Turbo."""

from training.engine.families.ernie.family import ErnieImageFamily

FAMILIES = (ErnieImageFamily,)
