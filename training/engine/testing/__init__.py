"""Test models and data for the engine, never used by a training itself: small random-weight base models of
every family, built locally from configs with the real pipeline classes (every code path runs on a CPU in
seconds with nothing downloaded), a tiny captioner, synthetic images, and what the benchmarks and tests
read about them. The tests, `bench/`, `manage.py make_base_model` and the demo use them.

Each family's tiny model is built by its folder's `tiny.py` (training/engine/families/<folder>/tiny.py),
which lists it in `TINY_MODELS` with the settings its learning checks run at; the shared tokenizers, VAEs
and helpers are in this package."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.families import FAMILY_KEYS
from training.engine.errors import EngineError
from training.engine.testing.captioner import CAPTIONER_WORDS, build_tiny_captioner

# Every family has a tiny model (tests/training/test_families.py keeps it so).
FAMILIES = FAMILY_KEYS

LOSS_DROP = 0.15  # the learning bench's target: the held-out loss's lowest point at least this far below its start
# A FLUX velocity loss has a higher floor (the noise in a nearly clean image cannot be told apart).
FLOW_LOSS_DROP = 0.08


@dataclass(frozen=True)
class LearningRun:
    """A learning-bench run of a tiny model (bench/learning.py): its steps and learning rate at batch 2 and
    rank 4, any other training settings it needs, and the held-out loss drop it must reach."""

    steps: int
    learning_rate: float
    options: Mapping[str, Any] = field(default_factory=dict)
    loss_drop: float = LOSS_DROP


@dataclass(frozen=True)
class TinyModel:
    build: Callable[..., Path]  # (out_dir, *, seed) -> out_dir
    learning: LearningRun
    # The trigger-word run; None where the tiny model cannot learn one (its tiny.py says why).
    trigger: LearningRun | None = None
    # The edit run of a family that learns edits beside text to image (a family that learns only edits has its
    # edit run as `learning`).
    edit: LearningRun | None = None


def tiny_model(family: str) -> TinyModel:
    from training.engine.families import family_module

    models: dict[str, TinyModel] = family_module(family, "tiny").TINY_MODELS
    try:
        return models[family]
    except KeyError:
        raise EngineError(f"the {family} family's folder builds no tiny model") from None


def build_tiny_model(family: str, out_dir: Path, *, seed: int = 0) -> Path:
    if family not in FAMILIES:
        raise EngineError(f"unknown family {family!r}; tiny models exist for: {', '.join(FAMILIES)}")
    return tiny_model(family).build(Path(out_dir), seed=seed)


__all__ = [
    "CAPTIONER_WORDS",
    "FAMILIES",
    "LearningRun",
    "TinyModel",
    "build_tiny_captioner",
    "build_tiny_model",
    "tiny_model",
]
