"""Every write endpoint refuses a field it does not know (the README's promise), naming it, and writes nothing:
a walk over every POST, PUT and PATCH operation of the published schema, each sent a body it would accept plus
one unknown field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from drf_spectacular.generators import SchemaGenerator

from models_app.models import Model
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db

UNKNOWN = "evil_field"


def write_operations() -> set[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method in ("post", "put", "patch") and operation.get("requestBody")
    }


def bodies(model: Model, image_ids: list[str], username: str) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """(method, schema path) -> (the URL, a body the endpoint accepts): each gets UNKNOWN added."""
    m, image = model.public_id, image_ids[0]
    data_url = "data:image/png;base64,iVBORw0KGgo="  # never read: the unknown field is refused first
    return {
        ("POST", "/api/v1/auth/token"): ("/api/v1/auth/token", {"username": username, "password": "pw-long-enough"}),
        ("POST", "/api/v1/auth/token/refresh"): ("/api/v1/auth/token/refresh", {"refresh": "x"}),
        ("POST", "/api/v1/training/"): ("/api/v1/training/", {"trigger_word": "zxq", "entity_id": str(model.uuid)}),
        ("POST", "/v1/assets"): ("/v1/assets", {"data": data_url, "name": "a.png"}),
        ("POST", "/v1/images/generation"): ("/v1/images/generation", {"modelID": m, "prompt": "zxq"}),
        ("POST", "/v1/models"): ("/v1/models", {"name": "n"}),
        ("PUT", "/v1/models/{model_id}"): (f"/v1/models/{m}", {"name": "n"}),
        ("PATCH", "/v1/models/{model_id}"): (f"/v1/models/{m}", {"name": "n"}),
        ("PUT", "/v1/models/{model_id}/train"): (f"/v1/models/{m}/train?dryRun=true", {"parameters": {}}),
        ("POST", "/v1/models/{model_id}/train/action"): (f"/v1/models/{m}/train/action", {"action": "stop"}),
        ("POST", "/v1/models/{model_id}/training-images"): (
            f"/v1/models/{m}/training-images",
            {"assetId": image},
        ),
        ("PUT", "/v1/models/{model_id}/training-images/{image_id}"): (
            f"/v1/models/{m}/training-images/{image}",
            {"description": "a caption"},
        ),
        ("PUT", "/v1/models/{model_id}/training-images/pairs"): (
            f"/v1/models/{m}/training-images/pairs",
            {"pairs": [{"source_id": image_ids[0], "target_id": image_ids[1]}]},
        ),
        ("POST", "/v1/tools/train"): ("/v1/tools/train", {"action": "start", "model_id": m, "dry_run": True}),
    }


def test_every_write_endpoint_refuses_an_unknown_field_and_writes_nothing(tiny_sd15: Path) -> None:
    model = ModelFactory(name="before")
    add_images(model, 2)
    image_ids = [image.public_id for image in model.training_images.select_related("asset")]
    user = get_user_model().objects.create_user(username="walker", password="pw-long-enough")
    cases = bodies(model, image_ids, user.username)
    assert set(cases) == write_operations()  # a new write endpoint joins the walk
    client = api_client_for(model.team)
    for (method, _), (url, body) in sorted(cases.items()):
        before = (Model.objects.count(), model.training_images.count(), model.pairs.count())
        response = getattr(client, method.lower())(url, {**body, UNKNOWN: 1}, format="json")
        assert response.status_code in (400, 422), (method, url, response.status_code, response.content)
        assert UNKNOWN in json.dumps(response.json()), (method, url, response.json())
        assert (Model.objects.count(), model.training_images.count(), model.pairs.count()) == before, url
    model.refresh_from_db()
    assert model.name == "before"
    # Nested objects too: a pair (seed 004) and a generation's fields are objects of their own.
    pair = {"source_id": image_ids[0], "target_id": image_ids[1], UNKNOWN: 1}
    nested = client.put(f"/v1/models/{model.public_id}/training-images/pairs", {"pairs": [pair]}, format="json")
    assert nested.status_code == 400 and UNKNOWN in json.dumps(nested.json())
