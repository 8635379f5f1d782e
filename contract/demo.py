"""The demo's recipe: what `manage.py demo` trains and bench/demo.py measures over many seeds, so that what
the demo claims is what the bench checked."""

from __future__ import annotations

from typing import Any

TRIGGER_WORD = "zxq"
IMAGES = 15  # generated images (make_images): coloured shapes on coloured backgrounds, each captioned
HELD_OUT = 3  # the last images are kept out of the training: the held-out loss is measured on them
STEPS = 300
PROMPT = f"{TRIGGER_WORD}, a blue circle on a white background"
SEED = 7  # the before/after picture's seed
DATA_SEED = 1  # make_images' seed: which shapes and colours
TRAINING_SEED = 42  # the training's `seed` (the parameter's default, stated so the bench can start from it)

# The training, in the parameter table's names (contract/parameters.py).
PARAMETERS: dict[str, Any] = {
    "seed": TRAINING_SEED,
    "rank": 8,
    "learning_rate": 0.002,
    "batch_size": 2,
    "resolution": 64,
    "optimizer": "adamw",
    "preprocessing_captioning_strategy": "description",
    "sample_steps": 10,
}
VALIDATIONS = 6  # the held-out loss is measured this many times in a run (sample_every = steps // 6)

# What the demo reports as learning, chosen with bench/demo.py over 10 seeds (docs: benchmarks): the held-out
# loss's lowest point against its start, and how near each training image the generations of its own caption
# land with the LoRA against without it (classifier-free guidance off: evaluate.caption_match).
CAPTION_MATCH_IMAGES = 6  # training images whose captions are generated
CAPTION_MATCH_SEEDS = (1, 2)
