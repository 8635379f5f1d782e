"""The training loop shared by every family. `loop.py` puts the phases in order and reads as the table of
contents; each phase has its module: `setup` (the spec's checks, the denoiser made trainable, the text
encoders' adapters), `dataset` (preprocessing), `cache` (latents and caption encodings, computed once),
`batches` (micro-batches from the cache), `context` and `step` (one optimisation step: noise, predict, loss,
optimizer), `optimizer`, `ema`, `validation`, `sampling` and `checkpointing` (saves and the run's
fingerprint)."""

from training.engine.trainer.loop import train

__all__ = ["train"]
