import base64

import pytest
from rest_framework.test import APIClient

from models_app.models import Model, TrainingTask
from models_app.services.accounts import api_key_create, api_key_revoke
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db


def test_get_model_answers_the_result_envelope() -> None:
    model = ModelFactory(name="Shapes")
    add_images(model, 3)
    response = api_client_for(model.team).get(f"/v1/models/{model.public_id}")
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["id"] == model.public_id
    assert result["name"] == "Shapes"
    assert result["status"] == "new"
    assert result["trainingImagesNumber"] == 3
    assert result["trainingProgress"] is None
    assert result["weightsUrl"] is None


def test_another_teams_key_gets_404_for_the_model_and_its_training(tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 12)
    stranger = api_client_for(TeamFactory())
    for path in (f"/v1/models/{model.public_id}", f"/v1/models/{model.public_id}/train"):
        response = stranger.get(path)
        assert response.status_code == 404, path
        assert response.json()["detail"] == f"model {model.public_id} not found"
    assert TrainingTask.objects.count() == 0


def test_basic_auth_with_key_and_secret_works_and_a_revoked_key_does_not() -> None:
    model = ModelFactory()
    api_key, secret = api_key_create(team=model.team)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{api_key.key}:{secret}".encode()).decode())
    assert client.get(f"/v1/models/{model.public_id}").status_code == 200
    api_key_revoke(api_key=api_key)
    response = client.get(f"/v1/models/{model.public_id}")
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid API key"


@pytest.mark.parametrize(
    "header",
    ["", "Bearer key_nope.nope", "Basic !!!notbase64", "Basic " + base64.b64encode(b"key_x:").decode()],
)
def test_missing_or_wrong_credentials_get_401(header: str) -> None:
    model = ModelFactory()
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    assert client.get(f"/v1/models/{model.public_id}").status_code == 401


def test_get_train_starts_the_training(tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 12)
    client = api_client_for(model.team)
    response = client.get(f"/v1/models/{model.public_id}/train")
    assert response.status_code == 200
    body = response.json()
    assert body["result"] == "Training triggered"
    assert body["status"] == "queued"
    task = TrainingTask.objects.get(model=model)
    assert body["taskId"] == str(task.pk)
    detail = client.get(f"/v1/models/{model.public_id}").json()["result"]
    assert detail["status"] == "queued"
    assert detail["trainingProgress"]["taskId"] == str(task.pk)
    assert detail["trainingProgress"]["progress"] == 0.0

    again = client.get(f"/v1/models/{model.public_id}/train")
    assert again.status_code == 409
    assert again.json()["detail"] == "Model is already training"


def test_get_train_with_too_few_images_is_a_400_naming_count_and_bounds(tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, 11)
    response = api_client_for(model.team).get(f"/v1/models/{model.public_id}/train")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "the model has 11 training images; training needs between 12 and 20",
        "code": "invalid",
        "field": "training_images",
        "count": 11,
        "min": 12,
        "max": 20,
    }
    assert Model.objects.get(pk=model.pk).status == "new"
