"""The engine on its own (no Django): real trainings of tiny models of every family, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from contract.families import family_facts
from training.engine import (
    DatasetImage,
    DatasetPair,
    EngineError,
    SilentCallbacks,
    TrainingCancelled,
    TrainingSpec,
    TrainingSuspended,
    train,
)
from training.engine.base_models import resolve_family
from training.engine.checkpoints import list_checkpoints
from training.engine.data import caption_for, make_buckets, nearest_bucket, validate_transforms
from training.engine.export import LORA_WEIGHTS_NAME, from_kohya, read_metadata
from training.engine.families import family_class
from training.engine.generate import generate
from training.engine.testing import FAMILIES  # every family, each with a tiny model
from training.engine.testing.images import write_dataset

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass


def dataset(folder: Path, count: int = 4) -> list[DatasetImage]:
    return write_dataset(folder, count)


def bucket_of(image: Path, family: str, base: Path) -> tuple[int, int]:
    """The bucket a training image of this size falls in, at 64 px for the family's tiny model."""
    multiple = family_class(family)(str(base), torch.device("cpu"), torch.float32).size_multiple()
    with Image.open(image) as opened:
        return nearest_bucket(*opened.size, make_buckets(64, multiple))


def make_spec(base: Path, tmp_path: Path, **overrides: object) -> TrainingSpec:
    """A short run on generated images; a family that learns only edits gets before/after pairs of them."""
    images = dataset(tmp_path / "data")
    pairs = [DatasetPair(source=images[i], target=images[i + 1], instruction="make it another shape") for i in range(3)]
    values: dict = {
        "base_model": str(base),
        "output_dir": tmp_path / "out",
        "images": images,
        "pairs": pairs if family_facts(resolve_family(str(base))).needs_pairs else [],
        "trigger_word": "zxq",
        "rank": 4,
        "steps": 8,
        "learning_rate": 1e-3,
        "batch_size": 2,
        "optimizer": "adamw",
        "captioning_strategy": "description",
        "progress_interval_seconds": 0.0,
        "save_every": 1000,
    }
    values.update(overrides)
    return TrainingSpec(**values)


class Recorder(SilentCallbacks):
    def __init__(self, cancel_after: int | None = None) -> None:
        self.steps: list[int] = []
        self.stages: list[str] = []
        self.logs: list[str] = []
        self.samples: list[tuple[int, str, Path]] = []
        self.checkpoints: list[int] = []
        self.cancel_after = cancel_after

    def on_stage(self, stage: str, processed: int, total: int) -> None:
        self.stages.append(stage)

    def on_progress(self, progress) -> None:
        self.steps.append(progress.step)

    def on_log(self, message: str) -> None:
        self.logs.append(message)

    def on_sample(self, step: int, prompt: str, path: Path) -> None:
        self.samples.append((step, prompt, path))

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.checkpoints.append(step)

    def should_cancel(self) -> bool:
        return self.cancel_after is not None and bool(self.steps) and self.steps[-1] >= self.cancel_after


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_a_lora_that_loads_back_and_changes_the_output(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    base = tiny_models[family]
    recorder = Recorder()
    result = train(make_spec(base, tmp_path), recorder)
    assert result.family == family == resolve_family(str(base))
    assert recorder.steps == list(range(1, 9))
    assert recorder.stages.index("caching") < recorder.stages.index("training") < recorder.stages.index("exporting")
    assert result.final_loss is not None and np.isfinite(result.final_loss)

    source = Image.open(tmp_path / "data" / sorted(p.name for p in (tmp_path / "data").iterdir())[0]).convert("RGB")
    common: dict = {
        "base_model": str(base),
        "prompt": "zxq, a red circle",
        "steps": 3,
        "seed": 7,
        "width": 64,
        "height": 64,
    }
    if family_facts(family).needs_pairs:  # an edit model generates from a source image
        common["image"] = source
    plain = pixels(generate(**common)[0])
    tuned = pixels(generate(**common, lora_path=result.weights_path)[0])
    assert plain.shape in ((64, 64, 3), (64, 64, 4))  # RGB, or RGBA (Qwen-Image 2.1 draws transparency too)
    assert np.array_equal(plain, pixels(generate(**common)[0]))  # deterministic for a seed...
    assert np.abs(plain - tuned).mean() > 0.01  # ...so the difference is the LoRA's

    metadata = read_metadata(result.weights_path)
    assert metadata["family"] == family and metadata["trigger_word"] == "zxq" and metadata["rank"] == "4"
    assert metadata["steps"] == "8" and len(metadata["dataset_hash"]) == 16
    if not family_facts(family).comfyui:
        assert result.kohya_path is None  # ComfyUI cannot run the family: no file for it
        return
    # The kohya/ComfyUI file holds the same tensors under kohya names, with alphas.
    diffusers_state = load_file(result.weights_path)
    kohya_state = load_file(result.kohya_path)
    component = family_facts(family).denoiser
    # What ComfyUI's loader for the family reads (the family folder's comfyui.py; tests/training/test_comfyui_keys.py
    # checks each name): the component's usual prefix unless the family's facts name another.
    prefix = family_facts(family).kohya_prefix or {"unet": "lora_unet_", "transformer": "lora_transformer_"}[component]
    assert all(key.startswith(prefix) for key in kohya_state)
    # One kohya name per diffusers module (Ideogram 4's file fuses each layer's q, k and v as ComfyUI's model does).
    kohya_state = family_class(family).kohya_modules(kohya_state)
    assert {float(v) for k, v in kohya_state.items() if k.endswith(".alpha")} == {4.0}
    modules = sorted({key.split(".", 1)[1].rsplit(".lora_", 1)[0] for key in diffusers_state})
    restored = from_kohya(kohya_state, modules, component)
    assert restored.keys() == diffusers_state.keys()
    assert all(torch.equal(restored[key], diffusers_state[key]) for key in diffusers_state)
    assert read_metadata(result.kohya_path)["layout"] == "kohya"


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_checkpoints_resumes_and_samples(family: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    options = {"steps": 6, "save_every": 3, "sample_every": 6, "sample_steps": 2, "sample_prompts": ["zxq, a test"]}
    whole = load_file(
        train(make_spec(tiny_models[family], tmp_path / "whole", **options), SilentCallbacks()).weights_path
    )
    spec = make_spec(tiny_models[family], tmp_path / "parts", **options)
    interrupted = Recorder(cancel_after=4)
    with pytest.raises(TrainingCancelled):
        train(spec, interrupted)
    assert interrupted.checkpoints == [3]
    resumed = Recorder()
    result = train(spec, resumed)
    assert result.resumed_from_step == 3 and resumed.steps[0] == 4
    assert [(step, prompt) for step, prompt, _ in resumed.samples] == [(6, "zxq, a test")]
    if family_facts(family).needs_pairs:
        # An edit model's sample is the first pair's source beside its edit, at that pair's bucket.
        width, height = bucket_of(spec.pairs[0].target.path, family, tiny_models[family])
        assert Image.open(result.samples[0]).size == (2 * width, height)
    else:
        assert Image.open(result.samples[0]).size == (64, 64)
    finished = load_file(result.weights_path)
    assert all(torch.equal(finished[key], whole[key]) for key in whole)


# The families whose edit pairs may carry several sources (those that learn only edits also train on pairs above).
EDIT_FAMILIES = [family for family in FAMILIES if family_facts(family).max_sources > 1]


@pytest.mark.slow
@pytest.mark.parametrize("family", EDIT_FAMILIES)
def test_an_edit_model_trains_on_pairs_of_several_sources_and_resumes(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Given pairs, a family that learns edits trains an edit model: each pair's sources are the reference images
    its pipeline conditions on (two here, one in another pair), its target what it learns to make. A resumed run
    reaches the uninterrupted one's weights; samples show the sources beside the result; the LoRA generates from
    reference images through the pipeline."""
    images = dataset(tmp_path / "data", 6)
    pairs = [
        DatasetPair(source=images[i], other_sources=(images[i + 2],), target=images[i + 1], instruction="swap them")
        for i in range(2)
    ] + [DatasetPair(source=images[4], target=images[5], instruction="swap them")]  # one source: its own batches
    options = {"steps": 6, "save_every": 3, "sample_every": 6, "sample_steps": 2, "sample_prompts": ["zxq, swap them"]}
    base = tiny_models[family]
    whole = load_file(
        train(make_spec(base, tmp_path / "whole", pairs=pairs, **options), SilentCallbacks()).weights_path
    )
    spec = make_spec(base, tmp_path / "parts", pairs=pairs, **options)
    with pytest.raises(TrainingCancelled):
        train(spec, Recorder(cancel_after=4))
    resumed = Recorder()
    result = train(spec, resumed)
    assert result.resumed_from_step == 3 and resumed.steps[0] == 4
    finished = load_file(result.weights_path)
    assert all(torch.equal(finished[key], whole[key]) for key in whole)
    width, height = bucket_of(pairs[0].target.path, family, base)
    assert Image.open(result.samples[0]).size == (3 * width, height)  # two sources, then the edit

    references = [Image.open(images[0].path).convert("RGB"), Image.open(images[2].path).convert("RGB")]
    common: dict = {"base_model": str(base), "prompt": "zxq, swap them", "steps": 2, "seed": 7, "width": 64,
                    "height": 64, "image": references}  # fmt: skip
    plain = pixels(generate(**common)[0])
    tuned = pixels(generate(**common, lora_path=result.weights_path)[0])
    assert np.abs(plain - tuned).mean() > 0.01
    one_reference = pixels(generate(**{**common, "image": references[:1]}, lora_path=result.weights_path)[0])
    assert np.abs(tuned - one_reference).mean() > 0.01  # the second reference does condition the edit


def test_pairs_are_refused_by_a_family_that_does_not_learn_edits(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    images = dataset(tmp_path / "data")
    pairs = [DatasetPair(source=images[0], target=images[1], instruction="x")]
    with pytest.raises(EngineError, match="the sd15 family does not learn edits"):
        train(make_spec(tiny_models["sd15"], tmp_path, pairs=pairs), SilentCallbacks())


def test_an_sd15_kohya_file_loads_in_diffusers_too(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = train(make_spec(tiny_models["sd15"], tmp_path, steps=4), SilentCallbacks())
    common: dict = {"base_model": str(tiny_models["sd15"]), "prompt": "zxq", "steps": 2, "seed": 1}
    plain = pixels(generate(**common)[0])
    from_diffusers = pixels(generate(**common, lora_path=result.weights_path)[0])
    kohya = pixels(generate(**common, lora_path=result.kohya_path)[0])
    assert np.abs(plain - kohya).mean() > 0.01  # the kohya file did load...
    assert np.abs(from_diffusers - kohya).mean() < 0.5  # ...as the same LoRA


def test_same_seed_and_data_give_the_same_weights(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    first = load_file(train(make_spec(tiny_models["sd15"], tmp_path / "a"), SilentCallbacks()).weights_path)
    second = load_file(train(make_spec(tiny_models["sd15"], tmp_path / "b"), SilentCallbacks()).weights_path)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_resume_from_a_checkpoint_gives_the_uninterrupted_runs_weights(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    base = tiny_models["sd15"]
    options = {"steps": 12, "save_every": 4, "max_step_saves_to_keep": 2, "caption_dropout_rate": 0.2,
               "lr_scheduler": "cosine", "lr_warmup_steps": 3, "transforms": [{"type": "horizontal_flip", "p": 0.5}]}  # fmt: skip
    uninterrupted = load_file(train(make_spec(base, tmp_path / "whole", **options), SilentCallbacks()).weights_path)

    interrupted = Recorder(cancel_after=9)
    spec = make_spec(base, tmp_path / "parts", **options)
    with pytest.raises(TrainingCancelled):
        train(spec, interrupted)
    assert interrupted.checkpoints == [4, 8]
    assert [p.name for p in list_checkpoints(spec.checkpoint_dir)] == ["step-0000004", "step-0000008"]

    resumed = Recorder()
    result = train(spec, resumed)
    assert result.resumed_from_step == 8
    assert resumed.steps[0] == 9  # only the steps after the checkpoint are repeated
    assert "resumed from the checkpoint at step 8 (step-0000008)" in resumed.logs
    finished = load_file(result.weights_path)
    assert all(torch.equal(finished[k], uninterrupted[k]) for k in uninterrupted)


class Suspender(Recorder):
    """A worker shutting down after `after` steps: should_suspend turns true."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.snapshots: list[int] = []

    def on_snapshot(self, step: int, path: Path) -> None:
        self.snapshots.append(step)

    def should_suspend(self) -> bool:
        return bool(self.steps) and self.steps[-1] >= self.after


def test_a_suspended_run_saves_a_snapshot_where_it_stopped_and_resumes_there_bit_exactly(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    base = tiny_models["sd15"]
    options = {"steps": 10, "save_every": 4, "caption_dropout_rate": 0.2}
    uninterrupted = load_file(train(make_spec(base, tmp_path / "whole", **options), SilentCallbacks()).weights_path)

    spec = make_spec(base, tmp_path / "parts", **options)
    stopping = Suspender(after=6)
    with pytest.raises(TrainingSuspended) as suspended:
        train(spec, stopping)
    assert suspended.value.step == 6 and stopping.steps[-1] == 6
    assert stopping.checkpoints == [4] and stopping.snapshots == [6]  # not a user checkpoint: a snapshot

    resumed = Recorder()
    result = train(spec, resumed)
    assert result.resumed_from_step == 6 and resumed.steps[0] == 7
    finished = load_file(result.weights_path)
    assert all(torch.equal(finished[k], uninterrupted[k]) for k in uninterrupted)


def test_checkpoints_keep_only_the_newest_and_ignore_partial_ones(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    spec = make_spec(tiny_models["sd15"], tmp_path, steps=10, save_every=2, max_step_saves_to_keep=2)
    recorder = Recorder(cancel_after=9)
    with pytest.raises(TrainingCancelled):
        train(spec, recorder)
    assert recorder.checkpoints == [2, 4, 6, 8]
    assert [p.name for p in list_checkpoints(spec.checkpoint_dir)] == ["step-0000006", "step-0000008"]
    # A checkpoint cut short by a crash is never used.
    (spec.checkpoint_dir / "step-0000008" / "optimizer.pt").unlink()
    result = train(spec, Recorder())
    assert result.resumed_from_step == 6


def test_the_vae_encodes_each_image_once_and_a_resume_encodes_none(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import AutoencoderKL

    calls: list[int] = []
    original = AutoencoderKL.encode

    def counting(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    spec = make_spec(tiny_models["sd15"], tmp_path, steps=20)
    recorder = Recorder()
    train(spec, recorder)
    assert sum(calls) == 4  # four images, twenty steps of batch two
    calls.clear()
    spec.steps = 21  # another run on the same data: latents come from the cache
    train(spec, Recorder())
    assert calls == []


def test_samples_are_taken_every_sample_every_steps(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recorder = Recorder()
    spec = make_spec(
        tiny_models["sd15"], tmp_path, steps=6, sample_every=3, sample_steps=2, sample_prompts=["zxq", "zxq, blue"]
    )
    result = train(spec, recorder)
    assert [(step, prompt) for step, prompt, _ in recorder.samples] == [
        (3, "zxq"),
        (3, "zxq, blue"),
        (6, "zxq"),
        (6, "zxq, blue"),
    ]
    assert all(Image.open(path).size == (64, 64) for _, _, path in recorder.samples)
    assert result.samples == [path for _, _, path in recorder.samples]


def test_full_fine_tuning_saves_the_denoisers_weights(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    result = train(make_spec(tiny_models["sd15"], tmp_path, training_type="FULL", steps=3), SilentCallbacks())
    base = UNet2DConditionModel.from_pretrained(str(tiny_models["sd15"]), subfolder="unet")
    tuned = load_file(result.weights_path)
    assert tuned.keys() == base.state_dict().keys()
    assert any(not torch.equal(tuned[k], v) for k, v in base.state_dict().items())
    base.load_state_dict(tuned)  # the file is the UNet's own layout
    assert read_metadata(result.weights_path)["training_type"] == "FULL"
    assert result.kohya_path is None


# Every text-to-image family but SD 1.5 (above); edit models generate from a source image, which this test has not.
FULL_FAMILIES = [family for family in FAMILIES if family != "sd15" and not family_facts(family).trains_pairs]


@pytest.mark.slow
@pytest.mark.parametrize("family", FULL_FAMILIES)
def test_each_family_fine_tunes_fully_and_generates_from_the_result(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """FULL: the file is the denoiser's own layout, trained away from the base, and generation with it
    differs from the base's (the API's FULL path is exercised on SD 3.5 in test_runner_engine)."""
    base = tiny_models[family]
    result = train(make_spec(base, tmp_path, training_type="FULL", steps=3, learning_rate=1e-3), SilentCallbacks())
    tuned = load_file(result.weights_path)
    denoiser = family_facts(family).denoiser
    original = load_file(str(base / denoiser / "diffusion_pytorch_model.safetensors"))
    assert tuned.keys() == original.keys()
    assert any(not torch.equal(tuned[key], original[key].to(tuned[key].dtype)) for key in original)
    assert result.kohya_path is None
    common: dict = {
        "base_model": str(base),
        "prompt": "zxq, a red circle",
        "steps": 2,
        "seed": 7,
        "width": 64,
        "height": 64,
    }
    plain = pixels(generate(**common)[0])
    tuned_image = pixels(generate(**common, lora_path=result.weights_path)[0])
    assert np.abs(plain - tuned_image).mean() > 0.01


def test_cancel_stops_between_steps_and_exports_nothing(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    recorder = Recorder(cancel_after=3)
    with pytest.raises(TrainingCancelled):
        train(make_spec(tiny_models["sd15"], tmp_path, steps=50), recorder)
    assert recorder.steps[-1] == 3
    assert not (tmp_path / "out" / LORA_WEIGHTS_NAME).exists()


def test_a_diverging_run_fails_with_a_readable_message(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"training diverged at step \d+: the loss is (nan|inf)"):
        train(make_spec(tiny_models["sd15"], tmp_path, learning_rate=1e30, steps=6), SilentCallbacks())


def test_an_edit_family_without_pairs_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="the flux-kontext family learns edits: the model needs before/after pairs"):
        train(make_spec(tiny_models["flux-kontext"], tmp_path, pairs=[]), SilentCallbacks())


def test_bucketing_keeps_the_aspect_ratio(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    buckets = make_buckets(512, 64)
    assert (512, 512) in buckets and all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert nearest_bucket(4000, 3000, buckets) in {(576, 448), (640, 512)}
    assert nearest_bucket(3000, 4000, buckets)[0] < nearest_bucket(3000, 4000, buckets)[1]
    folder = tmp_path / "wide"
    folder.mkdir()
    Image.new("RGB", (200, 100), "red").save(folder / "wide.png")
    Image.new("RGB", (100, 200), "blue").save(folder / "tall.png")
    images = [DatasetImage(path=folder / name, name=name, caption="x") for name in ("wide.png", "tall.png")]
    result = train(make_spec(tiny_models["sd15"], tmp_path, images=images, steps=2, batch_size=1), SilentCallbacks())
    assert result.steps_done == 2


# --- captions and transforms ---------------------------------------------------------------------


def test_caption_strategies(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), "red").save(path)
    image = DatasetImage(path=path, name="photo.png", caption="a red square")
    assert caption_for(image, strategy="trigger_only", trigger_word="zxq") == "zxq"
    assert caption_for(image, strategy="description", trigger_word="zxq") == "zxq, a red square"
    tagged = DatasetImage(path=path, name="photo.png", caption="zxq, a red square")
    assert caption_for(tagged, strategy="description", trigger_word="zxq") == "zxq, a red square"
    empty = DatasetImage(path=path, name="photo.png", caption="   ")
    assert caption_for(empty, strategy="description", trigger_word="zxq") == "zxq"

    with pytest.raises(EngineError, match=r"'photo.png' has no caption file beside it \(\.txt\)"):
        caption_for(image, strategy="filename", trigger_word="zxq")
    path.with_suffix(".txt").write_text("  ", encoding="utf-8")
    with pytest.raises(EngineError, match=r"the caption file of 'photo\.png' is empty"):
        caption_for(image, strategy="filename", trigger_word="zxq")
    path.with_suffix(".txt").write_text("a square, red\n", encoding="utf-8")
    assert caption_for(image, strategy="filename", trigger_word="zxq") == "zxq, a square, red"

    with pytest.raises(EngineError, match="no local captioning model is installed"):
        caption_for(image, strategy="automatic", trigger_word="zxq")

    def colour_captioner(picture: Image.Image, prompt: str | None) -> str:
        red, green, blue = picture.convert("RGB").resize((1, 1)).getpixel((0, 0))
        return f"{prompt or 'a picture'}: mostly {'red' if red > max(green, blue) else 'not red'}"

    assert (
        caption_for(image, strategy="automatic", trigger_word="zxq", captioner=colour_captioner, prompt="describe")
        == "zxq, describe: mostly red"
    )
    with pytest.raises(EngineError, match="'poetry' is unknown"):
        caption_for(image, strategy="poetry", trigger_word="zxq")


def test_automatic_captions_are_used_in_training(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = train(
        make_spec(
            tiny_models["sd15"],
            tmp_path,
            captioning_strategy="automatic",
            captioner=lambda image, prompt: "a shape",
            steps=2,
        ),
        SilentCallbacks(),
    )
    assert set(result.captions.values()) == {"zxq, a shape"}


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        ("resize", "must be a list of objects"),
        ([{"type": "sharpen"}], r"preprocessing_transforms\[0\]: unknown transform 'sharpen'"),
        ([{"type": "resize"}], r"resize needs \"size\" or both \"width\" and \"height\""),
        ([{"type": "center_crop", "size": "big"}], r"preprocessing_transforms\[0\].size must be a number"),
        ([{"type": "horizontal_flip", "p": 2}], r"\.p must be between 0 and 1"),
        ([{"type": "resize", "size": 64, "angle": 3}], "resize takes size, width, height, not 'angle'"),
        ([{"size": 64}], "unknown transform None"),
    ],
)
def test_bad_transforms_are_named(transforms: object, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        validate_transforms(transforms)


def test_transforms_resize_crop_and_flip_apply(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    transforms = [
        {"type": "resize", "size": 80},
        {"type": "center_crop", "width": 80, "height": 40},
        {"type": "random_crop", "size": 32},
        {"type": "horizontal_flip", "p": 1.0},
    ]
    parsed = validate_transforms(transforms)
    assert [t.type for t in parsed] == ["resize", "center_crop", "random_crop", "horizontal_flip"]
    result = train(make_spec(tiny_models["sd15"], tmp_path, transforms=transforms, steps=2), SilentCallbacks())
    assert result.steps_done == 2
    caches = list((tmp_path / "out" / "cache").glob("cache-*-flip.pt"))
    assert len(caches) == 1  # flips were cached alongside the plain latents


def test_base_model_problems_are_named(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    assert resolve_family(str(tiny_models["sdxl"])) == "sdxl"
    with pytest.raises(EngineError, match=r"has no model_index\.json"):
        resolve_family(str(tmp_path))
    with pytest.raises(EngineError, match="does not exist"):
        resolve_family(str(tmp_path / "missing"))
    with pytest.raises(EngineError, match="neither a local diffusers folder nor a hub id this machine can fetch"):
        resolve_family("nobody/no-such-model")


def test_an_unreadable_image_in_the_dataset_is_named(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    images = [*dataset(tmp_path / "d", 2), DatasetImage(path=broken, name="broken.png")]
    with pytest.raises(EngineError, match=r"'broken\.png' cannot be read as an image"):
        train(make_spec(tiny_models["sd15"], tmp_path, images=images), SilentCallbacks())
