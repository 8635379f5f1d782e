"""The `automatic` captioning strategy with a real (tiny, random-weight) local captioning model loaded
through transformers' pipeline, as TRAINING_CAPTION_MODEL names it: with and without a prompt, in the
engine and through a training task."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from training.engine import SilentCallbacks, train
from training.engine.captioning import TransformersCaptioner
from training.engine.testing import CAPTIONER_WORDS, build_tiny_captioner

WORDS = set(CAPTIONER_WORDS[5:])


@pytest.fixture(scope="module")
def captioner_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_captioner(tmp_path_factory.mktemp("captioner") / "tiny-blip")


def red() -> Image.Image:
    return Image.new("RGB", (48, 40), (220, 30, 30))


@pytest.mark.engine
def test_the_captioner_writes_words_with_and_without_a_prompt(captioner_folder: Path) -> None:
    captioner = TransformersCaptioner(str(captioner_folder), max_new_tokens=5)
    plain = captioner(red(), None)
    assert len(plain.split()) == 5 and set(plain.split()) <= WORDS, plain
    assert captioner(red(), None) == plain  # greedy: the same image gets the same caption

    prompted = captioner(red(), "a photo of")
    assert len(prompted.split()) == 5 and set(prompted.split()) <= WORDS, prompted
    # The prompt steers the model but is not repeated in the caption.
    assert not prompted.startswith("a photo of")


@pytest.mark.engine
def test_a_missing_or_unloadable_captioner_is_named(tmp_path: Path) -> None:
    from training.engine.errors import EngineError

    with pytest.raises(EngineError, match="does not exist"):
        TransformersCaptioner(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="cannot be loaded"):
        TransformersCaptioner(str(tmp_path / "empty"))


@pytest.mark.engine
@pytest.mark.slow
def test_a_training_captions_its_images_with_the_local_model(
    captioner_folder: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from tests.training.test_engine import make_spec

    captioner = TransformersCaptioner(str(captioner_folder), max_new_tokens=4)
    spec = make_spec(
        tiny_models["sd15"],
        tmp_path,
        captioning_strategy="automatic",
        captioning_prompt="a photo of",
        captioner=captioner,
        steps=2,
    )
    result = train(spec, SilentCallbacks())
    for caption in result.captions.values():
        trigger, _, words = caption.partition(", ")
        assert trigger == "zxq" and len(words.split()) == 4 and set(words.split()) <= WORDS, caption
