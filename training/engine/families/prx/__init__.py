"""PRX (Photoroom): the latent-space PRX models on FLUX.1's VAE."""

from training.engine.families.prx.family import PRXFamily

FAMILIES = (PRXFamily,)
