"""A change made through one interface is visible through every other."""

from __future__ import annotations

import pytest

from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db


def test_an_image_added_by_the_tool_shows_in_the_model_and_in_the_seed_003_task(tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 11)
    client = api_client_for(model.team)
    upload = client.post(
        "/v1/tools/train", {"action": "upload_images", "model_id": model.public_id, "images": []}, format="json"
    )
    assert upload.status_code == 400  # an empty list is refused, not a no-op
    from io import BytesIO

    from tests.helpers import png

    file = BytesIO(png(colour="purple"))
    file.name = "extra.png"
    asset_id = client.post("/v1/assets", {"file": file}, format="multipart").json()["asset"]["id"]
    added = client.post(
        "/v1/tools/train", {"action": "upload_images", "model_id": model.public_id, "images": [asset_id]}, format="json"
    )
    assert added.json() == {
        "status": "uploaded",
        "count": 1,
        "model_id": model.public_id,
        "training_image_ids": [asset_id],
        "training_images_total": 12,
    }
    detail = client.get(f"/v1/models/{model.public_id}").json()["result"]
    assert detail["trainingImagesNumber"] == 12
    listed = client.get(f"/v1/models/{model.public_id}/training-images").json()["results"]
    assert asset_id in [image["id"] for image in listed]

    task = client.post("/api/v1/training/", {"trigger_word": "zxq", "entity_id": detail["uuid"]}, format="json")
    assert task.status_code == 200, task.json()
    assert asset_id in task.json()["source_images"] and len(task.json()["source_images"]) == 12
    assert client.get(f"/v1/models/{model.public_id}").json()["result"]["status"] == "queued"


def test_a_task_cancelled_through_seed_003_shows_the_model_canceled(tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 12)
    client = api_client_for(model.team)
    task_id = client.get(f"/v1/models/{model.public_id}/train").json()["taskId"]
    assert client.post(f"/api/v1/training/{task_id}/cancel").json()["status"] == "CANCELLED"
    detail = client.get(f"/v1/models/{model.public_id}").json()["result"]
    assert detail["status"] == "canceled"
    assert detail["trainingProgress"]["status"] == "CANCELLED"
    again = client.post(f"/api/v1/training/{task_id}/cancel")
    assert again.status_code == 409
    assert again.json()["detail"] == f"training task {task_id} is CANCELLED and cannot be cancelled"


def test_deleting_a_training_model_cancels_it_and_hides_it(tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 12)
    client = api_client_for(model.team)
    task_id = client.get(f"/v1/models/{model.public_id}/train").json()["taskId"]
    deleted = client.delete(f"/v1/models/{model.public_id}")
    assert deleted.status_code == 200 and deleted.json()["result"]["status"] == "deleted"
    assert client.get(f"/v1/models/{model.public_id}").status_code == 404
    assert client.get("/v1/models").json()["count"] == 0
    assert client.get(f"/api/v1/training/{task_id}").json()["status"] == "CANCELLED"
