"""Per-key rate limits on uploads, starts and generations: 429 with Retry-After, each key its own budget."""

from __future__ import annotations

import base64

import pytest
from django.core.cache import cache

from models_app.models import Asset
from tests.factories import ModelFactory
from tests.helpers import api_client_for, png

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings):
    cache.clear()
    settings.API_THROTTLE_RATES = {"uploads": "2/min", "starts": "1/min", "generations": "1/min"}
    yield settings.API_THROTTLE_RATES
    cache.clear()


def throttled(response) -> None:
    assert response.status_code == 429, (response.status_code, response.content)
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["code"] == "throttled" and "throttled" in body["detail"]


def test_uploads_are_limited_per_key(rates) -> None:
    model = ModelFactory()
    first, second = api_client_for(model.team), api_client_for(model.team)
    data = {"data": "data:image/png;base64," + base64.b64encode(png()).decode(), "name": "a.png"}
    assert first.post("/v1/assets", data, format="json").status_code == 201
    assert first.post(f"/v1/models/{model.public_id}/training-images", data, format="json").status_code == 201
    throttled(first.post("/v1/assets", data, format="json"))
    tool = {"action": "upload_images", "model_id": model.public_id, "images": ["asset_x"]}
    throttled(first.post("/v1/tools/train", tool, format="json"))
    assert Asset.objects.count() == 2
    # Reads are not limited, and another key of the same team has its own budget.
    assert first.get(f"/v1/models/{model.public_id}/training-images").status_code == 200
    assert second.post("/v1/assets", data, format="json").status_code == 201


def test_starts_and_generations_are_limited_per_key(rates, tiny_sd15) -> None:
    model = ModelFactory()
    client = api_client_for(model.team)
    m = model.public_id
    # A refused start still spends the budget: the limit is on calls, not on successes.
    assert client.get(f"/v1/models/{m}/train").status_code == 400
    throttled(client.get(f"/v1/models/{m}/train"))
    throttled(client.post("/v1/tools/train", {"action": "start", "model_id": m}, format="json"))
    throttled(client.post("/api/v1/training/", {"trigger_word": "x", "entity_id": str(model.uuid)}, format="json"))
    # A dry run starts nothing and is never limited.
    for _ in range(3):
        assert client.put(f"/v1/models/{m}/train?dryRun=true", {}, format="json").status_code == 200
        dry_run = {"action": "start", "model_id": m, "dry_run": True}
        assert client.post("/v1/tools/train", dry_run, format="json").status_code == 200
    generation = {"modelID": m, "prompt": "p"}
    assert client.post("/v1/images/generation", generation, format="json").status_code == 409
    throttled(client.post("/v1/images/generation", generation, format="json"))


def test_a_scope_set_to_none_is_not_limited(rates, settings) -> None:
    settings.API_THROTTLE_RATES = {**rates, "uploads": None}
    model = ModelFactory()
    client = api_client_for(model.team)
    data = {"data": "data:image/png;base64," + base64.b64encode(png()).decode(), "name": "a.png"}
    for _ in range(4):
        assert client.post("/v1/assets", data, format="json").status_code == 201
