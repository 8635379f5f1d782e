"""Does the trainer learn what it is given? Per family, the longer version of tests/training/test_learning.py:
a LoRA with the default settings on 12 images of one colour (3 held out), then

- the held-out images' loss at fixed noise before and after training (lower: it generalised), and
- how much nearer to the training data generations from fixed seeds land with the LoRA than without it
  (the share of the distance removed, in the denoiser's latent space).

The held-out loss is measured every eighth of the run: its lowest point is what the run learned that
generalises; a rise after it is overfitting (9 training images), which is what validation is for.

Targets: the held-out loss's lowest point is at least the family's `loss_drop` below its start (a FLUX velocity
loss has a higher floor: training/engine/testing's `FLOW_LOSS_DROP`), and generations close at least `CLOSER` of
the distance.

The trigger word: a LoRA on red discs captioned with the trigger word and blue discs captioned without it;
from the same seeds, the prompt with the trigger word must generate at least `TRIGGER_PULL` of the blue-red
distance nearer red than the prompt without it, beyond what the base model's text path already does. The
SD family trains with offset noise there (see tests/training/test_learning.py for why).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

CLOSER = 0.2
SIZE = 32
TRIGGER_PULL = 0.25
# Steps, learning rate, other settings and held-out loss target per family (batch 2, rank 4): each family's
# tiny model record (training/engine/families/<folder>/tiny.py, `TINY_MODELS`), `learning` and `trigger`.


def validation_recorder() -> Any:
    from training.engine import SilentCallbacks

    class Validation(SilentCallbacks):
        def __init__(self) -> None:
            self.losses: dict[int, float] = {}

        def on_validation(self, step: int, loss: float) -> None:
            self.losses[step] = loss

    return Validation()


def run_family(family: str, folder: Path, *, quick: bool, edit: bool = False) -> dict[str, Any]:
    """The family's learning run: text to image, or (`edit`, and always for a family that learns only edits) an
    edit model learning to turn blue discs into red ones, measured from held-out sources."""
    from PIL import Image

    from contract.families import family_facts
    from training.engine import DatasetPair, TrainingSpec, train
    from training.engine.evaluate import shift_towards
    from training.engine.testing import build_tiny_model, tiny_model
    from training.engine.testing.images import write_concept

    edit = edit or family_facts(family).needs_pairs
    base = folder / "base" if (folder / "base").is_dir() else build_tiny_model(family, folder / "base")
    red = write_concept(folder / "red", 12, colour=(200, 30, 30), caption="zxq, a disc", held_out=3, size=SIZE)
    model = tiny_model(family)
    run = model.edit if edit and model.edit is not None else model.learning
    settings = {"steps": run.steps // 4 if quick else run.steps, "learning_rate": run.learning_rate, **run.options}
    pairs: list[DatasetPair] = []
    image = None
    prompt = "zxq, a disc"
    if edit:
        blue = write_concept(folder / "blue", 12, colour=(30, 40, 200), caption="", held_out=3, size=SIZE)
        pairs = [
            DatasetPair(source=s, target=t, instruction="make the background red")
            for s, t in zip(blue, red, strict=True)
        ]
        image = Image.open(blue[-1].path).convert("RGB")
        prompt = "zxq, make the background red"
    recorder = validation_recorder()
    began = time.perf_counter()
    result = train(
        TrainingSpec(
            base_model=str(base), output_dir=folder / ("edit" if edit else "out"), images=red, pairs=pairs,
            trigger_word="zxq", rank=4,
            batch_size=2, optimizer="adamw", captioning_strategy="description", resolution=SIZE,
            sample_every=max(1, settings["steps"] // 8), save_every=100_000, compile="off", **settings,
        ),
        recorder,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    trained = [item.path for item in red if not item.validation]
    shift = shift_towards(
        str(base), trained, adapter=result.weights_path, prompt=prompt, seeds=[1, 2, 3, 4], size=SIZE, image=image
    )
    before, after = recorder.losses[0], recorder.losses[settings["steps"]]
    best_step = min(recorder.losses, key=lambda step: recorder.losses[step])
    best = recorder.losses[best_step]
    target_drop = run.loss_drop
    return {
        "steps": settings["steps"],
        "train_seconds": round(seconds, 1),
        "heldout_loss_curve": {step: round(loss, 4) for step, loss in sorted(recorder.losses.items())},
        "heldout_loss_before": round(before, 4),
        "heldout_loss_best": round(best, 4),
        "heldout_loss_best_step": best_step,
        "heldout_loss_after": round(after, 4),
        "heldout_loss_drop": round(1 - best / before, 3),
        "target_loss_drop": target_drop,
        "generation_distance_without": round(shift.without, 4),
        "generation_distance_with": round(shift.with_adapter, 4),
        "generation_closer": round(shift.closer, 3),
        "target_closer": CLOSER,
    }


def run_trigger(family: str, base: Path, folder: Path, *, quick: bool) -> dict[str, Any]:
    from training.engine import SilentCallbacks, TrainingSpec, train
    from training.engine.evaluate import trigger_pull
    from training.engine.testing import tiny_model
    from training.engine.testing.images import write_concept

    red = write_concept(folder / "red", 8, colour=(200, 30, 30), caption="zxq, a disc", size=SIZE)
    blue = write_concept(folder / "blue", 8, colour=(30, 40, 200), caption="a disc", size=SIZE, seed=1, prefix="b")
    run = tiny_model(family).trigger
    if run is None:
        raise ValueError(f"the {family} tiny model has no trigger-word run")
    settings = {"steps": run.steps // 2 if quick else run.steps, "learning_rate": run.learning_rate, **run.options}
    result = train(
        TrainingSpec(
            base_model=str(base), output_dir=folder / "out", images=red + blue, trigger_word="", rank=4,
            batch_size=2, optimizer="adamw", captioning_strategy="description", resolution=SIZE,
            sample_every=settings["steps"], save_every=100_000, compile="off", **settings,
        ),
        SilentCallbacks(),
    )  # fmt: skip
    pull = trigger_pull(
        str(base), [item.path for item in red], [item.path for item in blue], adapter=result.weights_path,
        trigger_prompt="zxq, a disc", plain_prompt="a disc", seeds=[1, 2, 3, 4], size=SIZE,
    )  # fmt: skip
    return {
        "trigger_steps": settings["steps"],
        "trigger_pull_base": round(pull.base, 3),
        "trigger_pull_trained": round(pull.trained, 3),
        "trigger_pull_learned": round(pull.learned, 3),
        "target_trigger_pull": TRIGGER_PULL,
    }


def run(folder: Path, *, quick: bool = False) -> dict[str, Any]:
    from contract.families import family_facts
    from training.engine.testing import FAMILIES, tiny_model

    results = {}
    for family in FAMILIES:
        print(f"learning: {family} ...", flush=True)
        results[family] = run_family(family, folder / family, quick=quick)
        facts = family_facts(family)
        if facts.trains_pairs and not facts.needs_pairs:  # it learns edits too
            print(f"learning: {family} edit ...", flush=True)
            results[f"{family} edit"] = run_family(family, folder / family, quick=quick, edit=True)
        if tiny_model(family).trigger is not None:
            print(f"learning: {family} trigger word ...", flush=True)
            base = folder / family / "base"
            results[family].update(run_trigger(family, base, folder / family / "trigger", quick=quick))
    return results
