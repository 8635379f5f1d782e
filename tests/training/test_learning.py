"""The trainer learns what it is given: real trainings of each family's tiny model on a dataset with a
measurable property (the background colour), checked by held-out loss and by where generations land
(the share of their distance to the training data that the training removed).

The tiny models (each family folder's tiny.py) have working tokenizers and unit-variance latents, so a
caption and an image carry signal; `bench/learning.py` runs the same checks longer and prints them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from contract.families import edit_families
from training.engine import DatasetPair, SilentCallbacks, TrainingSpec, train
from training.engine.evaluate import shift_towards, trigger_pull
from training.engine.testing.images import write_concept

pytestmark = [pytest.mark.slow, pytest.mark.engine]

SIZE = 32  # pixels: the tiny models' latents are 16x16
RED, BLUE = (200, 30, 30), (30, 40, 200)
SEEDS = [1, 2, 3]


class Validation(SilentCallbacks):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_validation(self, step: int, loss: float) -> None:
        self.losses[step] = loss


def run(base: Path, out: Path, images: list, *, steps: int, **overrides: Any) -> tuple[Any, Validation]:
    values: dict[str, Any] = {
        "base_model": str(base),
        "output_dir": out,
        "images": images,
        "trigger_word": "zxq",
        "rank": 4,
        "steps": steps,
        "learning_rate": 3e-3,
        "batch_size": 2,
        "optimizer": "adamw",
        "captioning_strategy": "description",
        "resolution": SIZE,
        "sample_every": steps,
        "save_every": 100_000,
        "progress_interval_seconds": 60.0,
        "compile": "off",  # compiling pays off only in long runs
    }
    values.update(overrides)
    recorder = Validation()
    return train(TrainingSpec(**values), recorder), recorder


# Steps, learning rate and the held-out loss the run must at least remove, per family: enough for a
# clear effect on a 2-core CPU in seconds. A flow model's loss (velocity) has a larger floor that no
# model removes (the noise in a nearly clean image cannot be told apart), so its share is smaller, as is
# SDXL's, kept from when its tiny UNet attended at low resolution only. The share of the generations'
# distance to the data the LoRA must remove is smallest for SD 1.5, whose random base drifts furthest
# from any data while sampling, and for SDXL (0.16 of the distance in 150 steps measured then).
FAMILY_RUNS = {
    "sd15": (150, 3e-3, 0.15, 0.08),
    "sdxl": (150, 3e-3, 0.1, 0.1),
    "flux": (150, 2e-3, 0.1, 0.2),
    "sd3": (100, 2e-3, 0.1, 0.2),
    "chroma": (100, 2e-3, 0.1, 0.2),
    "zimage": (100, 2e-3, 0.1, 0.2),
    "qwenimage": (100, 2e-3, 0.1, 0.2),
    "flux2-klein": (100, 2e-3, 0.1, 0.2),
    "flux2": (100, 2e-3, 0.1, 0.2),
    "hidream": (100, 2e-3, 0.1, 0.2),
    "ernie-image": (100, 2e-3, 0.1, 0.2),
    "krea2": (100, 2e-3, 0.1, 0.2),
    "prx": (100, 2e-3, 0.1, 0.2),
    # Ideogram 4 at its published guidance, which weighs the unconditional model by 1 - g = -6: the adapter's
    # change is shared with it (share_adapter_shift), without which the generations overshot the data threefold.
    "ideogram4": (100, 2e-3, 0.1, 0.2),
    # Qwen-Image 2.1's tiny model: its generations move least of the flow models (25 % nearer in the bench's 150
    # steps, while its held-out loss fell 17 %); more steps lowered the loss further but not the distance.
    "qwenimage21": (150, 2e-3, 0.1, 0.15),
}
# FLUX.2 dev is guidance-distilled and its pipeline generates at guidance 4.0. The tiny model's guidance
# embedding is random, so a LoRA trained at the usual 1.0 moved generations at 4.0 only 11 % nearer the
# data (55 % when trained at 4.0, whose held-out loss fell alike: -28 % and -30 %).
FAMILY_OPTIONS: dict[str, dict[str, Any]] = {"flux2": {"guidance_scale": 4.0}}


@pytest.mark.parametrize("family", sorted(FAMILY_RUNS))
def test_a_lora_with_the_default_targets_learns_its_data(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    steps, rate, drop, closer = FAMILY_RUNS[family]
    images = write_concept(tmp_path / "red", 12, colour=RED, caption="zxq, a disc", held_out=3, size=SIZE)
    options = FAMILY_OPTIONS.get(family, {})
    result, validation = run(tiny_models[family], tmp_path / "out", images, steps=steps, learning_rate=rate, **options)

    # Held-out images of the same concept, never trained on: their loss at fixed noise drops clearly.
    before, after = validation.losses[0], validation.losses[steps]
    assert after < (1 - drop) * before, (family, validation.losses)

    # Generations from fixed seeds land nearer the training data with the LoRA than without it.
    trained = [image.path for image in images if not image.validation]
    shift = shift_towards(
        str(tiny_models[family]), trained, adapter=result.weights_path, prompt="zxq, a disc", seeds=SEEDS, size=SIZE
    )
    assert shift.closer > closer, shift


# Steps, learning rate, extra settings and the share of the red-blue distance the trigger word must come to
# move generations by, per family. SD's noise prediction sees an image's overall colour through the noise
# (the mean of 8x8 latents' noise is far from zero), so without offset noise it never needs the caption for
# it, as real SD never learns a dark or bright image from a prompt without it; 0.5 on 8x8 latents is what
# 0.06 is on SD 1.5's 64x64. A flow model's velocity target holds the clean image itself and needs none.
TRIGGER_RUNS: dict[str, tuple[int, float, dict[str, Any], float]] = {
    "sd15": (150, 3e-3, {"noise_offset": 0.5}, 0.15),
    "sdxl": (150, 3e-3, {"noise_offset": 0.5}, 0.3),
    "flux": (150, 2e-3, {}, 0.1),
    "sd3": (100, 2e-3, {}, 0.25),
    # Chroma's caption reaches the image only through T5's tokens in the joint attention (no pooled
    # vector): at 2e-3 the tiny model's pull stayed at 0.03-0.06 after 150-300 steps, 0.45 at 5e-3.
    "chroma": (150, 5e-3, {}, 0.2),
    "zimage": (100, 2e-3, {}, 0.25),
    "hidream": (100, 2e-3, {}, 0.25),
    # ERNIE-Image reads its caption through the joint attention only, as Chroma (0.38 at 5e-3 in 150 steps).
    "ernie-image": (150, 5e-3, {}, 0.2),
    # PRX reads the caption only as the attention's extra keys and values; it comes to read the trigger word
    # late (0.00 after 150 steps, 2.35 after 300 at 5e-3).
    "prx": (300, 5e-3, {}, 0.25),
    # No Qwen-Image row: the tiny model's transformer is nearly blind to its caption at random init
    # (random text moves its prediction by about 1 %), and a trigger word pulled 0.03-0.07 after 150
    # steps at 2e-3 or 5e-3. Its learning is checked above; real Qwen-Image reads captions closely.
    # Nor a FLUX.2 klein one, for a like reason: its transformer reads the caption only through attention
    # over 512 unmasked positions (no pooled vector, no mask), which the tiny random model spreads nearly
    # evenly; after 150-300 steps at 5e-3 to 1e-2 the trigger pulled 0.00-0.02 (the red discs' loss under
    # either caption equal to 0.1 %). Nor a Krea 2 one: its tiny model's prediction moves 0.1 % between two
    # captions, and a trigger word pulled 0.00-0.03 after 150-600 steps at 2e-3 to 1e-2. Nor an Ideogram 4 one
    # (0.6 %, and 0.00 after 150-300 steps at 2e-3 to 1e-2).
}


@pytest.mark.parametrize("family", sorted(TRIGGER_RUNS))
def test_the_trigger_word_selects_the_concept_it_was_captioned_on(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Red discs captioned with the trigger word, blue ones without it (no automatic trigger word): from
    the same seeds, the prompt with the trigger word now generates nearer red than the prompt without."""
    steps, rate, extra, margin = TRIGGER_RUNS[family]
    red = write_concept(tmp_path / "red", 8, colour=RED, caption="zxq, a disc", size=SIZE)
    blue = write_concept(tmp_path / "blue", 8, colour=BLUE, caption="a disc", size=SIZE, seed=1, prefix="b")
    base = tiny_models[family]
    result, _ = run(base, tmp_path / "out", red + blue, steps=steps, learning_rate=rate, trigger_word="", **extra)

    pull = trigger_pull(
        str(base),
        [image.path for image in red],
        [image.path for image in blue],
        adapter=result.weights_path,
        trigger_prompt="zxq, a disc",
        plain_prompt="a disc",
        seeds=SEEDS,
        size=SIZE,
    )
    assert pull.learned > margin, pull


def test_full_fine_tuning_learns_its_data(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    images = write_concept(tmp_path / "red", 12, colour=RED, caption="zxq, a disc", held_out=3, size=SIZE)
    result, validation = run(
        tiny_models["sd15"], tmp_path / "out", images, steps=100, training_type="FULL", learning_rate=3e-4
    )
    assert validation.losses[100] < 0.85 * validation.losses[0], validation.losses
    trained = [image.path for image in images if not image.validation]
    shift = shift_towards(
        str(tiny_models["sd15"]), trained, adapter=result.weights_path, prompt="zxq, a disc", seeds=SEEDS, size=SIZE
    )
    assert shift.closer > 0.2, shift


@pytest.mark.parametrize("family", [facts.key for facts in edit_families()])
def test_an_edit_lora_learns_the_transformation(family: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Pairs turn a blue disc into the same disc on red: from a held-out blue source the trained model's output
    moves towards the red targets, on every family that learns edits."""
    base = tiny_models[family]
    sources = write_concept(tmp_path / "blue", 10, colour=BLUE, caption="", held_out=2, size=SIZE, seed=5)
    targets = write_concept(tmp_path / "red", 10, colour=RED, caption="", held_out=2, size=SIZE, seed=5)
    pairs = [
        DatasetPair(source=source, target=target, instruction="make the background red")
        for source, target in zip(sources, targets, strict=True)
    ]
    options = FAMILY_OPTIONS.get(family, {})
    result, validation = run(base, tmp_path / "out", [], steps=200, learning_rate=2e-3, pairs=pairs, **options)
    # A flow model's velocity loss has a high floor (see FAMILY_RUNS); the edit model's drop is smaller still.
    assert validation.losses[200] < 0.95 * validation.losses[0], validation.losses

    held_out_source = Image.open(sources[-1].path).convert("RGB")
    shift = shift_towards(
        str(base),
        [target.path for target in targets if not target.validation],
        adapter=result.weights_path,
        prompt="zxq, make the background red",
        seeds=SEEDS,
        size=SIZE,
        image=held_out_source,
    )
    assert shift.closer > 0.2, shift
