"""List and detail endpoints cost the same number of queries whatever the number of rows."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from models_app.models import Pair
from models_app.services.training import training_start
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db


def queries(client, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content
    return len(captured)


def grow(team, count: int) -> None:
    for _ in range(count):
        model = ModelFactory(team=team)
        add_images(model, 12)
        images = list(model.training_images.all()[:2])
        Pair.objects.create(model=model, source=images[0], target=images[1])
        training_start(model=model)


@pytest.mark.parametrize(
    ("path", "budget"),
    [
        # the key, the page's models (each with its newest task) and their total, in one query
        ("/v1/models", 2),
        # the key, the model with its project, image count, trained weights and latest task
        ("/v1/models/{model}", 2),
        # the key, the model, the page's images with their total
        ("/v1/models/{model}/training-images", 3),
        # the key, the tasks
        ("/api/v1/training/?limit=50", 2),
    ],
)
def test_query_count_does_not_grow_with_rows(path: str, budget: int, tiny_sd15, settings) -> None:
    settings.API_KEY_CACHE_SECONDS = 0  # count the key's own query every time, however long growing takes
    team = TeamFactory()
    grow(team, 1)
    subject = ModelFactory(team=team)  # not training, so its dataset can grow
    add_images(subject, 2)
    client = api_client_for(team)
    client.get("/v1/models")  # the key's first use records last_used_at once; measure after it
    few = queries(client, path.replace("{model}", subject.public_id))
    grow(team, 4)
    add_images(subject, 8, seed=9)
    many = queries(client, path.replace("{model}", subject.public_id))
    assert many == few
    assert few == budget
