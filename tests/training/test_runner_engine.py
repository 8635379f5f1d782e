"""The runner drives the whole engine: samples, checkpoints, both weight layouts, pairs, sidecar captions;
and (fast, no training) turns a task into the engine's spec, reports its curves and fetches its newest save."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image
from safetensors.torch import load_file

from contract.families import edit_families, family_facts
from models_app.models import Model, TrainingCheckpoint, TrainingTask
from models_app.services.datasets import model_configure
from models_app.services.task_files import training_checkpoint_record
from models_app.services.training import ENGINE_OPTIONS, training_start
from models_app.services.worker_protocol import training_task_claim
from models_app.training_parameters import PARAMETERS
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import api_client_for, png, run_queued
from training import engine
from training.engine.checkpoints import FILES
from training.engine.export import read_metadata
from training.reporting import TaskReporter
from training.runner import build_spec, restore_checkpoint, run_training_task

pytestmark = pytest.mark.django_db
slow = pytest.mark.slow  # these train a tiny model


@slow
def test_a_training_records_samples_checkpoints_and_both_weight_layouts(tiny_sd15: Path, fast_training: dict) -> None:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(
        model=model,
        parameters={**fast_training, "steps": 6, "save_every": 3, "sample_every": 3, "sample_steps": 2,
                    "sample_prompts": ["zxq, a red circle"], "caption_dropout_rate": 0.1, "lr_scheduler": "cosine"},
    )  # fmt: skip
    task = training_start(model=model)
    assert task.training_options == {
        **{name: PARAMETERS[name].default for name in ENGINE_OPTIONS},
        "lr_scheduler": "cosine",
        "caption_dropout_rate": 0.1,
    }
    assert (task.training_options["compile"], task.training_options["quantize_base"]) == (None, None)  # automatic
    assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
    task.refresh_from_db()
    assert [(s.step, s.prompt) for s in task.samples.all()] == [(3, "zxq, a red circle"), (6, "zxq, a red circle")]
    assert all(Path(s.file.path).is_file() for s in task.samples.all())
    assert "checkpoint saved at step 3" in task.logs
    assert task.weights.name.endswith("pytorch_lora_weights.safetensors")
    assert task.weights_kohya.name.endswith("lora_kohya.safetensors")
    assert any(key.startswith("lora_unet_") for key in load_file(task.weights_kohya.path))


@slow
@pytest.mark.parametrize("family", [facts.key for facts in edit_families()])
def test_an_edit_model_trains_on_pairs_put_through_seed_004_and_generates_from_an_input_image(
    family: str, tiny_models: dict[str, Path], fast_training: dict, django_capture_on_commit_callbacks
) -> None:
    model = ModelFactory(type=Model.Type.EDIT)
    add_images(model, 5)
    images = [image.public_id for image in model.training_images.select_related("asset")]
    client = api_client_for(model.team)
    refused = client.get(f"/v1/models/{model.public_id}/train")
    assert refused.status_code == 400
    assert refused.json()["detail"] == "the model has 0 before/after pairs; an edit model needs at least 2"
    # A family that takes several reference images gets a pair with two sources.
    extra = [images[4]] if family_facts(family).max_sources > 1 else []
    pairs = [{"sourceId": images[0], "targetId": images[1], "instruction": "turn it", "extraSourceIds": extra},
             {"source_id": images[2], "target_id": images[3], "instruction": "recolour it"}]  # fmt: skip
    put = client.put(f"/v1/models/{model.public_id}/training-images/pairs", {"pairs": pairs}, format="json")
    assert put.status_code == 200, put.json()
    assert [pair.get("extra_source_ids", []) for pair in put.json()["pairs"]] == [extra, []]
    assert "extra_source_ids" not in put.json()["pairs"][1]  # a pair of one source has seed 004's shape
    model_configure(
        model=model,
        parameters={
            **fast_training,
            "steps": 3,
            "sample_every": 3,
            "sample_steps": 1,
            "sample_prompts": ["zxq, turn it"],
        },
    )
    wrong_base = client.get(f"/v1/models/{model.public_id}/train")  # SD 1.5 learns no edits
    assert wrong_base.status_code == 400 and all(
        facts.label in wrong_base.json()["detail"] for facts in edit_families()
    )

    model_configure(model=model, parameters={"base_model_path": str(tiny_models[family])})
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(f"/v1/models/{model.public_id}/train").status_code == 200
    assert run_queued() == [TrainingTask.Status.COMPLETED]
    model.refresh_from_db()
    assert model.status == Model.Status.READY
    sample = TrainingTask.objects.get(model=model).samples.get()
    target = model.training_images.get(asset__public_id=images[1]).asset
    with Image.open(sample.file.path) as picture, Image.open(target.file.path) as wanted:
        # The first pair's sources beside the edit: equal panels, each of about the target's aspect (its bucket).
        panels = 2 + len(extra)
        assert picture.width % panels == 0
        assert abs(picture.width / panels / picture.height - wanted.width / wanted.height) < 0.25

    missing = client.post(
        "/v1/images/generation", {"modelID": model.public_id, "prompt": "zxq, turn it"}, format="json"
    )
    assert missing.status_code == 400 and missing.json()["field"] == "image"
    with django_capture_on_commit_callbacks(execute=True):
        job = client.post(
            "/v1/images/generation",
            {
                "modelID": model.public_id,
                "prompt": "zxq, turn it",
                "image": images[0],
                "steps": 2,
                "width": 64,
                "height": 64,
            },
            format="json",
        )
    assert job.status_code == 200, job.json()
    assert run_queued() == ["completed"]
    result = client.get(f"/v1/jobs/{job.json()['result']['jobId']}").json()["result"]
    assert result["status"] == "completed" and len(result["images"]) == 1


@slow
def test_an_sd35_model_fine_tunes_fully_through_the_api_and_generates(
    tiny_models: dict[str, Path], fast_training: dict, django_capture_on_commit_callbacks
) -> None:
    model = ModelFactory()
    add_images(model, 12)
    base = tiny_models["sd3"]
    model_configure(
        model=model,
        parameters={**fast_training, "steps": 4, "training_type": "FULL", "learning_rate": 1e-4,
                    "base_model_path": str(base)},
    )  # fmt: skip
    client = api_client_for(model.team)
    quote = client.put(f"/v1/models/{model.public_id}/train?dryRun=true", {}, format="json").json()["result"]
    assert quote["canStart"] and quote["estimate"]["family"] == "sd3"
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(f"/v1/models/{model.public_id}/train").status_code == 200
    assert run_queued() == [TrainingTask.Status.COMPLETED]
    model.refresh_from_db()
    task = TrainingTask.objects.get(model=model)
    assert model.status == Model.Status.READY and task.weights_kohya.name == ""
    # The whole transformer, trained away from the base's weights.
    trained = load_file(task.weights.path)
    original = load_file(str(base / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert trained.keys() == original.keys()
    assert any(not (trained[key] == original[key]).all() for key in original)

    with django_capture_on_commit_callbacks(execute=True):
        job = client.post(
            "/v1/images/generation",
            {"modelID": model.public_id, "prompt": "zxq, a disc", "steps": 2, "width": 64, "height": 64},
            format="json",
        )
    assert job.status_code == 200, job.json()
    assert run_queued() == ["completed"]
    result = client.get(f"/v1/jobs/{job.json()['result']['jobId']}").json()["result"]
    assert result["status"] == "completed" and len(result["images"]) == 1


# The families of mid-2026, each trained through the API end to end (the engine's own tests cover every family).
API_FAMILIES = ["ernie-image", "krea2", "prx", "ideogram4", "qwenimage21"]


@slow
@pytest.mark.parametrize("family", API_FAMILIES)
def test_a_lora_of_each_new_family_trains_through_the_api_and_generates(
    family: str, tiny_models: dict[str, Path], fast_training: dict, django_capture_on_commit_callbacks
) -> None:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, "steps": 3, "base_model_path": str(tiny_models[family])})
    client = api_client_for(model.team)
    quote = client.put(f"/v1/models/{model.public_id}/train?dryRun=true", {}, format="json").json()["result"]
    assert quote["canStart"] and quote["estimate"]["family"] == family
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(f"/v1/models/{model.public_id}/train").status_code == 200
    assert run_queued() == [TrainingTask.Status.COMPLETED]
    model.refresh_from_db()
    task = TrainingTask.objects.get(model=model)
    assert model.status == Model.Status.READY and read_metadata(Path(task.weights.path))["family"] == family
    facts = family_facts(family)
    if facts.comfyui:  # the file for ComfyUI, under the names its loader maps for the family
        prefix = facts.kohya_prefix or "lora_transformer_"
        assert all(key.startswith(prefix) for key in load_file(task.weights_kohya.path))
    else:
        assert task.weights_kohya.name == ""  # ComfyUI cannot run the family

    with django_capture_on_commit_callbacks(execute=True):
        job = client.post(
            "/v1/images/generation",
            {"modelID": model.public_id, "prompt": "zxq, a disc", "steps": 2, "width": 64, "height": 64},
            format="json",
        )
    assert job.status_code == 200, job.json()
    assert run_queued() == ["completed"]
    result = client.get(f"/v1/jobs/{job.json()['result']['jobId']}").json()["result"]
    assert result["status"] == "completed" and len(result["images"]) == 1


@slow
def test_filename_captions_come_from_the_txt_files_beside_imported_images(
    tiny_sd15: Path, settings, tmp_path: Path, fast_training: dict
) -> None:
    folder = tmp_path / "imports" / "shoot"
    folder.mkdir(parents=True)
    settings.TRAINING_IMPORT_ROOTS = [tmp_path / "imports"]
    for index in range(12):
        (folder / f"{index:02d}.png").write_bytes(png(colour=(index * 20, 100, 50)))
        (folder / f"{index:02d}.txt").write_text(f"photo number {index}", encoding="utf-8")
    team = TeamFactory()
    response = api_client_for(team).post(
        "/api/v1/training/",
        {"trigger_word": "zxq", "source_images": [f"shoot/{i:02d}.png" for i in range(12)], "steps": 2,
         "preprocessing_captioning_strategy": "filename"},
        format="json",
    )  # fmt: skip
    assert response.status_code == 200, response.json()
    task = TrainingTask.objects.get(pk=response.json()["id"])
    assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
    task.refresh_from_db()
    dataset = Path(task.processed_dataset_path)
    assert sorted(p.read_text() for p in dataset.glob("*.txt"))[:2] == ["photo number 0", "photo number 1"]
    assert task.model.training_images.get(name="03.png").sidecar_caption == "photo number 3"


@slow
def test_transforms_are_validated_when_configured(tiny_sd15: Path) -> None:
    model = ModelFactory()
    response = api_client_for(model.team).patch(
        f"/v1/models/{model.public_id}",
        {"parameters": {"preprocessing_transforms": [{"type": "sharpen"}]}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "preprocessing_transforms[0]: unknown transform 'sharpen'; known: resize, center_crop, random_crop, horizontal_flip"
    )
    assert response.json()["field"] == "parameters.preprocessing_transforms"


# Fast: no training, a task built in the database with real image files.

OPTIONS = {
    "lr_scheduler": "cosine",
    "mixed_precision": "no",
    "lora_type": "loha",
    "lora_targets": "attention",
    "lora_dropout": 0.25,
    "repeats": 4,
    "loss_type": "smooth_l1",
    "huber_delta": 0.3,
    "min_snr_gamma": 5.0,
    "noise_offset": 0.1,
    "timestep_sampling": "uniform",
    "logit_mean": 0.5,
    "logit_std": 0.8,
    "sigmoid_scale": 1.5,
    "timestep_shift": 3.0,
    "ema": True,
    "ema_decay": 0.995,
    "ema_start_step": 5,
    "train_text_encoder": True,
    "text_encoder_learning_rate": 5e-5,
    "prior_preservation_class": "person",
    "prior_preservation_weight": 0.7,
    "masked_loss": True,
    "validation_split": 0.1,
}


def claimed_task(overrides: dict | None = None) -> TrainingTask:
    model = ModelFactory()
    add_images(model, 12)
    task = training_start(model=model, overrides=overrides)
    return training_task_claim(task_id=str(task.pk), worker_id="w")


def test_build_spec_hands_every_engine_option_to_the_spec_by_name(tiny_sd15: Path, tmp_path: Path) -> None:
    task = claimed_task({**OPTIONS, "rank": 8})
    held_out = task.source_images[3:5]
    TrainingTask.objects.filter(pk=task.pk).update(
        training_options={**task.training_options, "validation_images": held_out}
    )
    task.refresh_from_db()
    spec = build_spec(task, tmp_path / "work", TaskReporter(task, "w"))
    for name, value in OPTIONS.items():
        assert getattr(spec, name) == value, name
    assert (spec.rank, spec.steps, spec.trigger_word) == (8, task.steps, "zxq")
    assert len(spec.images) == 12 and all(image.path.is_file() for image in spec.images)
    flagged = [image.path.name for image in spec.images if image.validation]
    assert flagged == [f"{index:04d}-{task.source_images[index]}.png" for index in (3, 4)]
    assert all(image.repeats == 1 for image in spec.images)  # `repeats` is the spec's, for every image


def test_a_task_started_before_the_new_options_gets_the_engine_defaults(tiny_sd15: Path, tmp_path: Path) -> None:
    task = claimed_task()
    TrainingTask.objects.filter(pk=task.pk).update(training_options={"lr_scheduler": "linear"})
    task.refresh_from_db()
    spec = build_spec(task, tmp_path / "work", TaskReporter(task, "w"))
    default = engine.TrainingSpec(base_model="", output_dir=tmp_path, images=[], trigger_word="")
    assert spec.lr_scheduler == "linear"
    for name in ENGINE_OPTIONS:
        if name not in ("lr_scheduler", "validation_images"):
            assert getattr(spec, name) == getattr(default, name), name
    assert not any(image.validation for image in spec.images)


def test_the_reporter_records_the_smoothed_and_validation_curves(tiny_sd15: Path, settings) -> None:
    settings.TRAINING_PROGRESS_WRITE_SECONDS = 0
    task = claimed_task()
    reporter = TaskReporter(task, "w")
    reporter.on_progress(engine.Progress(stage="training", step=1, total_steps=10, loss=0.5))
    reporter.on_progress(engine.Progress(stage="training", step=2, total_steps=10, loss=0.4, smoothed_loss=0.45))
    reporter.on_validation(2, 0.61234567)
    reporter.on_validation(4, 0.55)
    reporter.on_validation(2, 0.6)  # a resume repeats step 2: the later points go
    reporter.flush(force=True)
    task.refresh_from_db()
    assert task.loss_history == [[1, 0.5], [2, 0.4, 0.45]]  # the first two numbers mean what they did
    assert task.validation_history == [[2, 0.6]]


def test_the_admin_progress_carries_the_validation_curve(tiny_sd15: Path, admin_client) -> None:
    task = claimed_task()
    TrainingTask.objects.filter(pk=task.pk).update(
        loss_history=[[1, 0.5, 0.5], [2, 0.4, 0.45]], validation_history=[[2, 0.6]]
    )
    progress = admin_client.get(reverse("admin:models_app_task_progress", args=[task.pk])).json()
    assert progress["loss_history"] == [[1, 0.5, 0.5], [2, 0.4, 0.45]]
    assert progress["validation_history"] == [[2, 0.6]]
    page = admin_client.get(reverse("admin:models_app_trainingtask_change", args=[task.pk])).content.decode()
    # The page draws its first chart from the same data, embedded with json_script.
    assert '<script id="loss-history" type="application/json">[[1, 0.5, 0.5], [2, 0.4, 0.45]]</script>' in page
    assert '<script id="validation-history" type="application/json">[[2, 0.6]]</script>' in page


def save_folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file_name in FILES:
        (folder / file_name).write_text(f"{name}/{file_name}")
    return folder


def test_a_snapshot_reaches_storage_through_the_reporter_without_touching_checkpoints(
    tiny_sd15: Path, tmp_path: Path
) -> None:
    task = claimed_task({"max_step_saves_to_keep": 1})
    reporter = TaskReporter(task, "w")
    reporter.on_checkpoint(100, save_folder(tmp_path, "step-0000100"))
    reporter.on_snapshot(150, save_folder(tmp_path, "snapshot-0000150"))
    reporter.on_snapshot(200, save_folder(tmp_path, "snapshot-0000200"))
    rows = TrainingCheckpoint.objects.filter(task=task).order_by("step")
    assert [(row.step, row.snapshot) for row in rows] == [(100, False), (200, True)]
    task.refresh_from_db()
    assert "snapshot saved at step 200" in task.logs and "checkpoint saved at step 100" in task.logs


@pytest.mark.parametrize(
    ("checkpoint_step", "snapshot_step", "fetched"),
    [
        (200, 300, "snapshot-0000300"),  # the snapshot is newer
        (400, 300, "step-0000400"),  # the user's checkpoint is newer
        (300, 300, "step-0000300"),  # the same step: the same files, the checkpoint's name
    ],
)
def test_a_new_attempt_fetches_the_newest_of_checkpoint_and_snapshot(
    tiny_sd15: Path, tmp_path: Path, checkpoint_step: int, snapshot_step: int, fetched: str
) -> None:
    task = claimed_task()
    made = tmp_path / "other-worker"
    training_checkpoint_record(
        task_id=task.pk, step=checkpoint_step, folder=save_folder(made, f"step-{checkpoint_step:07d}"), keep=4
    )
    training_checkpoint_record(
        task_id=task.pk, step=snapshot_step, folder=save_folder(made, f"snapshot-{snapshot_step:07d}"), keep=4,
        snapshot=True,
    )  # fmt: skip
    directory = tmp_path / "this-worker" / "checkpoints"
    reporter = TaskReporter(task, "w")
    restore_checkpoint(task, directory, reporter)
    assert sorted(path.name for path in directory.iterdir()) == [fetched]
    assert {path.name: path.read_text() for path in (directory / fetched).iterdir()} == {
        name: f"{fetched}/{name}" for name in FILES
    }
    kind = "snapshot" if fetched.startswith("snapshot") else "checkpoint"
    assert f"fetched the {kind} at step {max(checkpoint_step, snapshot_step)} from storage" in "".join(
        reporter.pending_lines
    )


def test_nothing_is_fetched_when_this_disk_has_a_save_as_new(tiny_sd15: Path, tmp_path: Path) -> None:
    task = claimed_task()
    training_checkpoint_record(
        task_id=task.pk, step=300, folder=save_folder(tmp_path / "made", "snapshot-0000300"), keep=4, snapshot=True
    )
    directory = tmp_path / "checkpoints"
    (directory / "step-0000900.partial").mkdir(parents=True)  # an unfinished write is not a save
    restore_checkpoint(task, directory, TaskReporter(task, "w"))
    assert sorted(path.name for path in directory.iterdir()) == ["snapshot-0000300", "step-0000900.partial"]

    # A second attempt on this same machine: its own save (here, the one just fetched) is as new.
    shutil.rmtree(directory / "snapshot-0000300")
    save_folder(directory, "step-0000300")
    reporter = TaskReporter(task, "w")
    restore_checkpoint(task, directory, reporter)
    assert sorted(path.name for path in directory.iterdir()) == ["step-0000300", "step-0000900.partial"]
    assert not any("fetched" in line for line in reporter.pending_lines)
