"""Every endpoint that takes an id answers 404 for another team's object, and changes nothing."""

from __future__ import annotations

import pytest
from django.db.models import Model as DjangoModel

from models_app.models import Asset, GenerationJob, Pair, TrainingImage, TrainingTask
from models_app.services.training import training_start
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db

ROUTES = [
    ("get", "/v1/models/{model}", None),
    ("put", "/v1/models/{model}", {"name": "x"}),
    ("patch", "/v1/models/{model}", {"name": "x"}),
    ("delete", "/v1/models/{model}", None),
    ("get", "/v1/models/{model}/train", None),
    ("put", "/v1/models/{model}/train", {"parameters": {}}),
    ("put", "/v1/models/{model}/train?dryRun=true", {"parameters": {}}),
    ("post", "/v1/models/{model}/train/action", {"action": "cancel"}),
    ("get", "/v1/models/{model}/training-images", None),
    ("post", "/v1/models/{model}/training-images", {"assetId": "{asset}"}),
    ("put", "/v1/models/{model}/training-images/pairs", {"pairs": []}),
    ("put", "/v1/models/{model}/training-images/{image}", {"description": "x"}),
    ("delete", "/v1/models/{model}/training-images/{image}", None),
    ("get", "/v1/assets/{asset}", None),
    ("post", "/v1/images/generation", {"modelID": "{model}", "prompt": "x"}),
    ("get", "/v1/jobs/{job}", None),
    ("post", "/v1/jobs/{job}/cancel", None),
    ("post", "/v1/tools/train", {"action": "start", "model_id": "{model}"}),
    ("get", "/api/v1/training/{task}", None),
    ("post", "/api/v1/training/{task}/cancel", None),
    ("post", "/api/v1/training/", {"trigger_word": "x", "entity_id": "{model_uuid}"}),
]


def snapshot() -> dict[str, list]:
    models: list[type[DjangoModel]] = [Asset, TrainingImage, Pair, TrainingTask, GenerationJob]
    rows = {m.__name__: sorted(map(str, m.objects.values_list("pk", flat=True))) for m in models}
    rows["statuses"] = sorted(TrainingTask.objects.values_list("status", flat=True))
    return rows


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_another_teams_ids_are_404_on_every_route(method: str, path: str, body: dict | None, tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 12)
    images = list(model.training_images.select_related("asset"))
    Pair.objects.create(model=model, source=images[0], target=images[1])
    task = training_start(model=model)
    job = GenerationJob.objects.create(team=model.team, model=model, prompt="x")
    ids = {
        "model": model.public_id,
        "model_uuid": str(model.uuid),
        "image": images[0].public_id,
        "asset": images[0].public_id,
        "task": str(task.pk),
        "job": job.public_id,
    }

    def fill(value: object) -> object:
        if isinstance(value, str):
            for key, real in ids.items():
                value = value.replace("{" + key + "}", real)
            return value
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    stranger = api_client_for(ModelFactory().team)
    before = snapshot()
    response = getattr(stranger, method)(fill(path), fill(body), format="json")
    assert response.status_code == 404, (response.status_code, response.content)
    assert "not found" in response.json()["detail"]
    assert snapshot() == before
