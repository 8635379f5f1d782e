"""The OpenAPI schema is served, validates, and describes what the server really answers."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from jsonschema import Draft202012Validator

from models_app.models import Model, TrainingTask
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for, png

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


def test_the_schema_and_swagger_ui_are_served(client) -> None:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    served = response.json()
    assert served["openapi"] == "3.1.0"
    for path in ("/v1/models/{model_id}/training-images/pairs", "/api/v1/training/", "/v1/tools/train"):
        assert path in served["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content


def test_the_schema_generates_without_warnings_and_validates(tmp_path) -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").stat().st_size > 10_000


def check(schema: dict[str, Any], template: str, method: str, response: Any) -> None:
    operation = schema["paths"][template][method]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{method.upper()} {template} answered {response.status_code}, which is undocumented"
    body_schema = documented["content"]["application/json"]["schema"]
    Draft202012Validator({**body_schema, "components": schema["components"]}).validate(response.json())


def test_responses_match_the_schema(schema: dict[str, Any], tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 12)
    client = api_client_for(model.team)
    m = model.public_id
    image = model.training_images.select_related("asset").first().public_id
    second = model.training_images.select_related("asset")[1].public_id
    upload = io.BytesIO(png())
    upload.name = "a.png"

    check(schema, "/v1/models", "get", client.get("/v1/models"))
    check(schema, "/v1/models", "post", client.post("/v1/models", {"name": "n"}, format="json"))
    check(schema, "/v1/models", "post", client.post("/v1/models", {}, format="json"))
    check(schema, "/v1/models/{model_id}", "get", client.get(f"/v1/models/{m}"))
    check(schema, "/v1/models/{model_id}", "get", client.get("/v1/models/model_missing"))
    check(schema, "/v1/models/{model_id}", "patch", client.patch(f"/v1/models/{m}", {"name": "x"}, format="json"))
    check(schema, "/v1/models/{model_id}/training-images", "get", client.get(f"/v1/models/{m}/training-images"))
    asset = client.post("/v1/assets", {"file": upload}, format="multipart")
    check(schema, "/v1/assets", "post", asset)
    check(schema, "/v1/assets/{asset_id}", "get", client.get(f"/v1/assets/{asset.json()['asset']['id']}"))
    path = "/v1/models/{model_id}/training-images/{image_id}"
    check(
        schema, path, "put", client.put(f"/v1/models/{m}/training-images/{image}", {"description": "d"}, format="json")
    )
    pairs = {"pairs": [{"source_id": image, "target_id": second}]}
    check(
        schema,
        "/v1/models/{model_id}/training-images/pairs",
        "put",
        client.put(f"/v1/models/{m}/training-images/pairs", pairs, format="json"),
    )
    check(
        schema, "/v1/models/{model_id}/train", "put", client.put(f"/v1/models/{m}/train?dryRun=true", {}, format="json")
    )
    check(schema, "/v1/models/{model_id}/train", "get", client.get(f"/v1/models/{m}/train"))
    check(schema, "/v1/models/{model_id}/train", "get", client.get(f"/v1/models/{m}/train"))  # 409
    tool = {"action": "start", "model_id": m, "dry_run": True}
    check(schema, "/v1/tools/train", "post", client.post("/v1/tools/train", tool, format="json"))
    task_id = str(TrainingTask.objects.get().pk)
    check(schema, "/api/v1/training/", "get", client.get("/api/v1/training/"))
    check(schema, "/api/v1/training/", "post", client.post("/api/v1/training/", {}, format="json"))  # 422
    check(schema, "/api/v1/training/{task_id}", "get", client.get(f"/api/v1/training/{task_id}"))
    check(schema, "/api/v1/training/{task_id}/cancel", "post", client.post(f"/api/v1/training/{task_id}/cancel"))
    check(
        schema,
        "/v1/models/{model_id}/train/action",
        "post",
        client.post(f"/v1/models/{m}/train/action", {"action": "cancel"}, format="json"),
    )
    check(
        schema,
        "/v1/models/{model_id}/training-images/{image_id}",
        "delete",
        client.delete(f"/v1/models/{m}/training-images/{image}"),
    )
    check(
        schema,
        "/v1/images/generation",
        "post",
        client.post("/v1/images/generation", {"modelID": m, "prompt": "p"}, format="json"),
    )
    check(schema, "/v1/models/{model_id}", "delete", client.delete(f"/v1/models/{m}"))
    assert Model.objects.get(pk=model.pk).status == "deleted"
