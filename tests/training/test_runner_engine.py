"""The runner drives the whole engine: samples, checkpoints, both weight layouts, pairs, sidecar captions."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from models_app.models import Model, TrainingTask
from models_app.services.datasets import model_configure, pairs_replace
from models_app.services.training import training_start
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import api_client_for, png, run_queued
from training.runner import run_training_task

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


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
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 0,
        "caption_dropout_rate": 0.1,
        "gradient_checkpointing": False,
        "guidance_scale": 1.0,
        "compile": None,  # automatic
        "quantize_base": None,
    }
    assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
    task.refresh_from_db()
    assert [(s.step, s.prompt) for s in task.samples.all()] == [(3, "zxq, a red circle"), (6, "zxq, a red circle")]
    assert all(Path(s.file.path).is_file() for s in task.samples.all())
    assert "checkpoint saved at step 3" in task.logs
    assert task.weights.name.endswith("pytorch_lora_weights.safetensors")
    assert task.weights_kohya.name.endswith("lora_kohya.safetensors")
    assert any(key.startswith("lora_unet_") for key in load_file(task.weights_kohya.path))


def test_an_edit_model_trains_on_its_pairs_and_generates_from_an_input_image(
    tiny_models: dict[str, Path], fast_training: dict, django_capture_on_commit_callbacks
) -> None:
    model = ModelFactory(type=Model.Type.EDIT)
    add_images(model, 4)
    images = [image.public_id for image in model.training_images.select_related("asset")]
    client = api_client_for(model.team)
    refused = client.get(f"/v1/models/{model.public_id}/train")
    assert refused.status_code == 400
    assert refused.json()["detail"] == "the model has 0 before/after pairs; an edit model needs at least 2"
    pairs_replace(model=model, pairs=[{"source_id": images[0], "target_id": images[1], "instruction": "turn it"},
                                      {"source_id": images[2], "target_id": images[3], "instruction": "recolour it"}])  # fmt: skip
    model_configure(model=model, parameters={**fast_training, "steps": 3})
    wrong_base = client.get(f"/v1/models/{model.public_id}/train")
    assert wrong_base.status_code == 400 and "trains on a FLUX.1 Kontext base model" in wrong_base.json()["detail"]

    model_configure(model=model, parameters={"base_model_path": str(tiny_models["flux-kontext"])})
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(f"/v1/models/{model.public_id}/train").status_code == 200
    assert run_queued() == [TrainingTask.Status.COMPLETED]
    model.refresh_from_db()
    assert model.status == Model.Status.READY

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
