"""Every endpoint that takes an id answers 404 for another team's object, and changes nothing."""

from __future__ import annotations

import base64

import pytest
from django.db.models import Model as DjangoModel

from models_app.models import Asset, GenerationJob, Pair, TrainingImage, TrainingTask
from models_app.services.training import training_start
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for, png

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


# Every route of the URL configuration, enumerated: a new route without a case here fails the test.
ID_VALUES = {"model_id": "model", "image_id": "image", "asset_id": "asset", "job_id": "job", "task_id": "task"}
BODIES: dict[tuple[str, str], dict | None] = {
    ("v1/models", "post"): {"name": "x", "projectId": "{project}"},
    ("v1/models/<str:model_id>", "put"): {"name": "x"},
    ("v1/models/<str:model_id>", "patch"): {"name": "x"},
    ("v1/models/<str:model_id>/train", "put"): {"parameters": {}},
    ("v1/models/<str:model_id>/train/action", "post"): {"action": "cancel"},
    ("v1/models/<str:model_id>/training-images", "post"): {"assetId": "{asset}"},
    ("v1/models/<str:model_id>/training-images/pairs", "put"): {"pairs": []},
    ("v1/models/<str:model_id>/training-images/<str:image_id>", "put"): {"description": "x"},
    ("v1/assets", "post"): {"data": "data:image/png;base64,{png}", "projectId": "{project}"},
    ("v1/images/generation", "post"): {"modelID": "{model}", "prompt": "x"},
    ("v1/tools/train", "post"): {"action": "start", "model_id": "{model}"},
    ("api/v1/training/", "post"): {"trigger_word": "x", "entity_id": "{model_uuid}"},
}
# Routes with no team data: the token endpoints (a user's credentials) and the schema and its viewer.
NOT_TEAM_DATA = {"api/v1/auth/token", "api/v1/auth/token/refresh", "api/schema/", "api/docs/"}


def api_routes() -> list[tuple[str, str]]:
    from django.urls import URLPattern, URLResolver, get_resolver

    found: list[tuple[str, str]] = []

    def walk(patterns: list, prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                route = prefix + str(entry.pattern)
                view = getattr(entry.callback, "view_class", None)
                if view is None or not route.startswith(("v1/", "api/")) or route in NOT_TEAM_DATA:
                    continue
                for method in ("get", "post", "put", "patch", "delete"):
                    if hasattr(view, method):
                        found.append((route, method))

    walk(get_resolver().url_patterns, "")
    return found


ENUMERATED = api_routes()


def test_every_api_route_has_a_tenancy_case() -> None:
    routes = {route for route, _ in ENUMERATED}
    assert len(routes) >= 15
    for key in BODIES:
        assert key in ENUMERATED, f"stale case {key}"
    for route, method in ENUMERATED:
        if method in ("post", "put", "patch") and "<" not in route:
            assert (route, method) in BODIES, f"{method.upper()} {route} has no tenancy case"


@pytest.mark.parametrize(("route", "method"), ENUMERATED, ids=[f"{m} {r}" for r, m in ENUMERATED])
def test_another_teams_data_is_invisible_on_every_route(route: str, method: str, tiny_sd15) -> None:
    import re

    from tests.factories import ProjectFactory

    model = ModelFactory(project=None)
    model.project = ProjectFactory(team=model.team)
    model.save(update_fields=["project"])
    add_images(model, 12)
    images = list(model.training_images.select_related("asset"))
    task = training_start(model=model)
    job = GenerationJob.objects.create(team=model.team, model=model, prompt="x")
    ids = {
        "model": model.public_id,
        "model_uuid": str(model.uuid),
        "image": images[0].public_id,
        "asset": images[0].public_id,
        "task": str(task.pk),
        "job": job.public_id,
        "project": model.project.public_id,
        "png": base64.b64encode(png()).decode(),
    }
    path = "/" + re.sub(r"<str:(\w+)>", lambda match: ids[ID_VALUES[match.group(1)]], route)

    def fill(value: object) -> object:
        if isinstance(value, str):
            return re.sub(r"\{(\w+)\}", lambda match: ids[match.group(1)], value)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    stranger = api_client_for(ModelFactory().team)
    before = snapshot()
    response = getattr(stranger, method)(path, fill(BODIES.get((route, method))), format="json")
    text = response.content.decode()
    if "<" in route or (route, method) in BODIES:
        # An id of another team's object, in the path or the body: not found, and nothing changes.
        assert response.status_code == 404, (response.status_code, text[:300])
        assert "not found" in response.json()["detail"]
    else:
        # A list of the stranger's own team: none of the other team's ids appear.
        assert response.status_code == 200, (response.status_code, text[:300])
        assert not any(value in text for key, value in ids.items() if key != "png")
    assert snapshot() == before
