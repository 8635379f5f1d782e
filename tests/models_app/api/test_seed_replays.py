"""Each seed document's examples replayed as a client written from that document alone would send them."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient
from safetensors.torch import load as load_safetensors

from models_app.models import Model, TrainingTask
from tests.factories import MembershipFactory, ModelFactory, TeamFactory, add_images
from tests.helpers import api_client_for, png, run_queued
from training.engine.testing.images import make_images

pytestmark = pytest.mark.django_db

SEED_003_TASK_FIELDS = {
    "id", "created_at", "updated_at", "origin_instance", "origin_zone", "origin_version", "origin_tenant_id",
    "training_type", "entity_type", "entity_id", "status", "progress", "current_step", "total_steps", "eta_seconds",
    "trigger_word", "training_folder", "rank", "save_every", "max_step_saves_to_keep", "batch_size", "steps",
    "learning_rate", "gradient_accumulation", "optimizer", "bypass_guidance_embedding", "base_model_path",
    "local_model_path", "sample_every", "sample_steps", "sample_prompts", "started_at", "completed_at", "logs",
    "error_message", "webhook_url", "celery_training_task_id", "celery_preprocessing_task_id", "celery_chain_task_id",
    "preprocessing_stage", "processed_files_count", "total_files_count", "preprocessing_started_at",
    "preprocessing_completed_at", "source_images", "processed_dataset_path", "preprocessing_transforms",
    "preprocessing_captioning_strategy", "preprocessing_captioning_prompt", "priority", "priority_changed_at",
}  # fmt: skip
SEED_004_IMAGE_FIELDS = {"id", "automatic_captioning", "created_at", "description", "download_url", "name"}


@pytest.mark.slow
def test_seed_002_create_upload_train_poll_generate(
    tiny_sd15, fast_training, django_capture_on_commit_callbacks
) -> None:
    team = TeamFactory()
    client = api_client_for(team)
    created = client.post("/v1/models", {"name": "Mugs", "type": "product", "parameters": fast_training}, format="json")
    assert created.status_code == 201, created.json()
    model_id = created.json()["result"]["id"]
    for image in make_images(12, trigger_word="zxq"):
        upload = io.BytesIO(image.content)
        upload.name = image.name
        response = client.post(
            f"/v1/models/{model_id}/training-images", {"file": upload, "description": image.caption}, format="multipart"
        )
        assert response.status_code == 201, response.json()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.get(f"/v1/models/{model_id}/train")
    assert response.status_code == 200
    assert response.json()["result"] == "Training triggered"

    # Poll until ready, the worker running the queue in between (as a separate machine would).
    statuses = [client.get(f"/v1/models/{model_id}").json()["result"]["status"]]
    run_queued()
    model = client.get(f"/v1/models/{model_id}").json()["result"]
    statuses.append(model["status"])
    assert statuses == ["queued", "ready"]
    assert model["trainingProgress"]["progress"] == 1.0
    # The weights URL downloads the LoRA itself (the test settings serve media as the web server would).
    weights = client.get(model["weightsUrl"].removeprefix("http://testserver"))
    assert weights.status_code == 200
    tensors = load_safetensors(b"".join(weights.streaming_content))
    assert tensors and all(key.startswith("unet.") for key in tensors)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/v1/images/generation",
            {
                "modelID": model_id,
                "prompt": "zxq, a red mug",
                "width": 64,
                "height": 64,
                "numImages": 2,
                "steps": 3,
                "seed": 5,
            },
            format="json",
        )
    assert response.status_code == 200, response.json()
    job_id = response.json()["result"]["jobId"]
    assert job_id.startswith("job_")
    assert client.get(f"/v1/jobs/{job_id}").json()["result"]["status"] == "pending"
    run_queued()
    job = client.get(f"/v1/jobs/{job_id}").json()["result"]
    assert job["status"] == "completed"
    assert len(job["images"]) == 2
    assert {(image["width"], image["height"]) for image in job["images"]} == {(64, 64)}
    assert all(image["url"].startswith("http://testserver/media/assets/") for image in job["images"])


def test_seed_004_add_replace_pairs_replace_delete(tiny_sd15) -> None:
    model = ModelFactory()
    client = api_client_for(model.team)
    base = f"/v1/models/{model.public_id}/training-images"

    # Add: by multipart file, then by a pre-uploaded asset id.
    upload = io.BytesIO(png(colour="blue"))
    upload.name = "my-training-image.jpg"
    first = client.post(base, {"file": upload, "description": "a blue square"}, format="multipart")
    assert first.status_code == 201
    image = first.json()["training_image"]
    assert set(image) == SEED_004_IMAGE_FIELDS
    assert image["id"].startswith("asset_") and image["name"] == "my-training-image.jpg"
    assert image["description"] == "a blue square" and image["automatic_captioning"] == ""
    assert image["created_at"].endswith("Z") and image["download_url"].startswith("http://testserver/media/")
    asset_upload = io.BytesIO(png(colour="green"))
    asset_upload.name = "green.png"
    asset_id = client.post("/v1/assets", {"file": asset_upload}, format="multipart").json()["asset"]["id"]
    second = client.post(base, {"assetId": asset_id}, format="json").json()["training_image"]
    assert second["id"] == asset_id

    # Replace pairs.
    pairs = client.put(
        f"{base}/pairs",
        {"pairs": [{"source_id": image["id"], "target_id": second["id"], "instruction": "make it green"}]},
        format="json",
    )
    assert pairs.status_code == 200
    assert pairs.json() == {
        "count": 1,
        "pairs": [{"instruction": "make it green", "source_id": image["id"], "target_id": second["id"]}],
    }

    # Replace the caption, then the file (a new file is a new asset, so a new id).
    replaced = client.put(f"{base}/{image['id']}", {"description": "a square, blue"}, format="json")
    assert replaced.status_code == 200
    assert replaced.json()["training_image"]["description"] == "a square, blue"
    new_file = io.BytesIO(png(colour="yellow"))
    new_file.name = "yellow.png"
    swapped = client.put(f"{base}/{image['id']}", {"file": new_file}, format="multipart").json()["training_image"]
    assert swapped["id"] != image["id"] and swapped["name"] == "yellow.png"
    assert swapped["description"] == "a square, blue"

    # Delete.
    deleted = client.delete(f"{base}/{second['id']}")
    assert deleted.status_code == 200
    listing = client.get(base).json()
    assert [entry["id"] for entry in listing["results"]] == [swapped["id"]]
    assert client.get(f"/v1/models/{model.public_id}").json()["result"]["trainingImagesNumber"] == 1


def test_seed_003_token_create_list_get_cancel(tiny_sd15) -> None:
    user = get_user_model().objects.create_user("ada", password="correct horse battery")
    team = MembershipFactory(user=user).team
    api = APIClient()
    tokens = api.post("/api/v1/auth/token", {"username": "ada", "password": "correct horse battery"}, format="json")
    assert tokens.status_code == 200
    refreshed = api.post("/api/v1/auth/token/refresh", {"refresh": tokens.json()["refresh"]}, format="json")
    assert refreshed.status_code == 200
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")

    asset_ids = []
    for index in range(12):
        upload = io.BytesIO(png(colour=(index * 20, 90, 200 - index * 10)))
        upload.name = f"photo-{index}.png"
        asset_ids.append(api.post("/v1/assets", {"file": upload}, format="multipart").json()["asset"]["id"])

    created = api.post(
        "/api/v1/training/",
        {"trigger_word": "sks", "entity_type": "SUBJECT", "source_images": asset_ids, "steps": 30},
        format="json",
    )
    assert created.status_code == 200, created.json()
    task = created.json()
    assert set(task) == SEED_003_TASK_FIELDS
    # Documented defaults for what the request left out.
    assert (task["training_type"], task["rank"], task["learning_rate"], task["optimizer"]) == (
        "LORA",
        16,
        0.0001,
        "adamw8bit",
    )
    assert (task["save_every"], task["max_step_saves_to_keep"], task["sample_every"], task["sample_steps"]) == (
        2000,
        4,
        250,
        25,
    )
    assert (task["priority"], task["origin_instance"], task["preprocessing_captioning_strategy"]) == (
        1,
        "unknown",
        "trigger_only",
    )
    assert (task["status"], task["progress"], task["steps"], task["total_steps"]) == ("PENDING", 0.0, 30, 30)
    assert task["entity_type"] == "SUBJECT" and task["source_images"] == asset_ids
    model = Model.objects.get(uuid=task["entity_id"])
    assert model.team == team and model.training_images.count() == 12 and model.status == "queued"

    listed = api.get("/api/v1/training/?limit=10&skip=0")
    assert listed.status_code == 200 and [t["id"] for t in listed.json()] == [task["id"]]
    assert api.get("/api/v1/training/?limit=10&skip=1").json() == []
    fetched = api.get(f"/api/v1/training/{task['id']}").json()
    assert fetched == task

    cancelled = api.post(f"/api/v1/training/{task['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    model.refresh_from_db()
    assert model.status == "canceled"


def test_seed_003_validation_errors_use_its_httpvalidationerror_shape() -> None:
    team = TeamFactory()
    response = api_client_for(team).post("/api/v1/training/", {"rank": "big", "training_type": "HUGE"}, format="json")
    assert response.status_code == 422
    problems = {tuple(item["loc"]): item for item in response.json()["detail"]}
    assert set(problems) == {("body", "trigger_word"), ("body", "rank"), ("body", "training_type")}
    assert all(set(item) == {"loc", "msg", "type"} for item in problems.values())
    assert TrainingTask.objects.count() == 0


def test_seed_001_every_action_with_dry_run_and_markdown(tiny_sd15) -> None:
    model = ModelFactory()
    client = api_client_for(model.team)
    asset_ids = []
    for index in range(13):
        upload = io.BytesIO(png(colour=(200, index * 15, 40)))
        upload.name = f"ref{index}.png"
        asset_ids.append(client.post("/v1/assets", {"file": upload}, format="multipart").json()["asset"]["id"])

    def tool(**arguments: object) -> dict:
        response = client.post("/v1/tools/train", {"model_id": model.public_id, **arguments}, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    uploaded = tool(action="upload_images", images=asset_ids)
    assert uploaded["status"] == "uploaded" and uploaded["count"] == 13
    updated = tool(action="update_image", training_image_id=asset_ids[0], image_data={"description": "the red one"})
    assert updated["status"] == "updated" and updated["training_image"]["description"] == "the red one"
    deleted = tool(action="delete_image", training_image_id=asset_ids[12])
    assert deleted == {
        "status": "deleted",
        "model_id": model.public_id,
        "training_image_id": asset_ids[12],
        "training_images_total": 12,
    }
    paired = tool(
        action="set_pairs",
        image_data={"pairs": [{"source_id": asset_ids[0], "target_id": asset_ids[1], "instruction": "warmer"}]},
    )
    assert paired["status"] == "pairs_set" and paired["count"] == 1

    estimate = tool(action="configure", config={"steps": 1200}, dry_run=True)
    assert estimate["status"] == "estimate" and estimate["estimate"]["steps"] == 1200
    model.refresh_from_db()
    assert model.parameters == {}  # a dry run changes nothing
    configured = tool(action="configure", config={"steps": 40, "learning_rate": 0.001})
    assert configured == {
        "status": "configured",
        "model_id": model.public_id,
        "parameters": {"steps": 40, "learning_rate": 0.001},
    }

    quote = tool(action="start", dry_run=True)
    assert quote["canStart"] is True and quote["estimate"]["steps"] == 40
    assert TrainingTask.objects.count() == 0
    started = tool(action="start")
    assert started["status"] == "started" and started["model_status"] == "queued"
    stopped = tool(action="stop")
    assert stopped["status"] == "stopped" and stopped["task_status"] == "CANCELLED"

    markdown = client.post(
        "/v1/tools/train",
        {"action": "start", "model_id": model.public_id, "dry_run": True, "response_format": "markdown"},
        format="json",
    )
    assert markdown.status_code == 200
    assert markdown["Content-Type"].startswith("text/markdown")
    text = markdown.content.decode()
    assert text.startswith("## Cost estimate (dry run, nothing changed)")
    assert f"- **Model id**: {model.public_id}" in text and "steps: 40" in text


def test_the_tool_needs_team_id_for_a_user_of_several_teams(tiny_sd15) -> None:
    user = get_user_model().objects.create_user("bo", password="pw-pw-pw-pw")
    first = MembershipFactory(user=user).team
    MembershipFactory(user=user)
    model = ModelFactory(team=first)
    client = APIClient()
    client.force_authenticate(user)
    unnamed = client.post(
        "/v1/tools/train", {"action": "start", "model_id": model.public_id, "dry_run": True}, format="json"
    )
    assert unnamed.status_code == 400
    assert unnamed.json()["detail"] == "you belong to several teams: name one with team_id"
    named = client.post(
        "/v1/tools/train",
        {"action": "start", "model_id": model.public_id, "dry_run": True, "team_id": first.public_id},
        format="json",
    )
    assert named.status_code == 200


def test_generation_refuses_a_model_that_is_not_ready() -> None:
    model = ModelFactory()
    add_images(model, 2)
    response = api_client_for(model.team).post(
        "/v1/images/generation", {"modelID": model.public_id, "prompt": "x"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["detail"] == f"model {model.public_id} is new; it must be ready to generate"
