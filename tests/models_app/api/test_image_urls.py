"""Images added by URL: fetched from a real HTTP server on loopback, with redirects and limits checked."""

from __future__ import annotations

import pytest

from models_app.models import Asset, TrainingImage
from tests.factories import ModelFactory
from tests.helpers import api_client_for, png

pytestmark = pytest.mark.django_db


def add_by_url(model, url: str):
    return api_client_for(model.team).post(
        f"/v1/models/{model.public_id}/training-images", {"url": url, "description": "from the web"}, format="json"
    )


def test_an_image_url_is_downloaded_verified_and_stored(image_server) -> None:
    model = ModelFactory()
    response = add_by_url(model, image_server.serve("cat.png", png(colour="orange")))
    assert response.status_code == 201, response.json()
    image = response.json()["training_image"]
    assert image["name"] == "cat.png" and image["description"] == "from the web"
    assert Asset.objects.get(public_id=image["id"]).format == "PNG"


def test_redirects_are_followed_and_each_hop_is_checked(image_server, settings) -> None:
    model = ModelFactory()
    image_server.serve("dog.png", png(colour="brown"))
    assert add_by_url(model, f"{image_server.url}/redirect-to-dog.png").status_code == 201
    settings.IMAGE_URL_ALLOW_PRIVATE_HOSTS = False
    refused = add_by_url(model, f"{image_server.url}/redirect-to-dog.png")
    assert refused.status_code == 400
    assert "private, loopback or link-local" in refused.json()["detail"]


def test_missing_oversized_and_non_image_urls_are_refused(image_server, settings) -> None:
    model = ModelFactory()
    missing = add_by_url(model, f"{image_server.url}/nothing.png")
    assert missing.status_code == 400 and "answered HTTP 404" in missing.json()["detail"]
    text = add_by_url(model, image_server.serve("notes.png", b"just some text"))
    assert text.status_code == 400 and "is not an image" in text.json()["detail"]
    settings.IMAGE_MAX_BYTES = 100
    big = add_by_url(model, image_server.serve("big.png", png((200, 200), fmt="BMP")))
    assert big.status_code == 400 and "larger than 100 bytes" in big.json()["detail"]
    assert TrainingImage.objects.count() == 0 and Asset.objects.count() == 0


def test_the_tool_uploads_by_url_too(image_server) -> None:
    model = ModelFactory()
    urls = [image_server.serve(f"ref{i}.png", png(colour=(i * 70, 20, 20))) for i in range(3)]
    response = api_client_for(model.team).post(
        "/v1/tools/train", {"action": "upload_images", "model_id": model.public_id, "images": urls}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["count"] == 3
