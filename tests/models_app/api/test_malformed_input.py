"""Malformed bodies on every write route (and junk query strings on reads): always a 4xx, never a 500."""

import itertools

import pytest

from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db
JUNK = [
    None,
    [],
    [1, "x"],
    "text",
    5,
    {"a": {"b": [None]}},
    {"parameters": [1]},
    {"pairs": [5]},
    {"pairs": "x"},
    {"images": [None]},
    {"action": None, "model_id": 5},
    {"modelID": ["x"], "prompt": {}},
    {"assetIds": "asset_x"},
    {"url": 5},
    {"data": None},
    {"config": [1], "action": "configure", "model_id": "{m}"},
    {"action": "set_pairs", "model_id": "{m}", "image_data": [5]},
    {"action": "update_image", "model_id": "{m}", "training_image_id": 5, "image_data": "x"},
    {"trigger_word": ["x"], "source_images": [5]},
    {"trigger_word": "x", "entity_id": "nope"},
    {"parameters": {"preprocessing_transforms": [{"type": "resize", "size": True}]}},
]


def test_malformed_input_is_always_a_4xx(tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 2)
    image = model.training_images.select_related("asset").first().public_id
    client = api_client_for(model.team)
    m = model.public_id
    routes = [
        ("post", "/v1/models"),
        ("patch", f"/v1/models/{m}"),
        ("put", f"/v1/models/{m}"),
        ("put", f"/v1/models/{m}/train"),
        ("put", f"/v1/models/{m}/train?dryRun=true"),
        ("post", f"/v1/models/{m}/train/action"),
        ("post", f"/v1/models/{m}/training-images"),
        ("put", f"/v1/models/{m}/training-images/pairs"),
        ("put", f"/v1/models/{m}/training-images/{image}"),
        ("post", "/v1/assets"),
        ("post", "/v1/images/generation"),
        ("post", "/v1/tools/train"),
        ("post", "/api/v1/training/"),
        ("get", "/api/v1/training/?limit=x&skip=-1"),
        ("get", "/v1/models?status=zzz&page=abc"),
    ]
    bad = []
    for (method, path), body in itertools.product(routes, JUNK):
        if isinstance(body, dict):
            body = {k: (v.replace("{m}", m) if isinstance(v, str) else v) for k, v in body.items()}
        response = client.get(path) if method == "get" else getattr(client, method)(path, body, format="json")
        # Well-formed after all: an empty configure changes nothing, a dry run without a body quotes the
        # stored parameters, and an empty list of pairs clears them.
        configure_or_quote = path.endswith(m) or path.endswith("dryRun=true")
        accepted = (body is None and method in ("put", "patch") and configure_or_quote) or (
            body == [] and path.endswith("/pairs")
        )
        if accepted:
            assert response.status_code == 200, (method, path, body, response.status_code)
        elif not 400 <= response.status_code < 500:
            bad.append((method, path, body, response.status_code))
    assert bad == [], "\n".join(map(str, bad))
