"""FLUX.1 [dev] and its edit model, FLUX.1 Kontext."""

from training.engine.families.flux.family import FluxFamily, FluxKontextFamily

FAMILIES = (FluxFamily, FluxKontextFamily)
