"""Stored files are reachable only through URLs the server signed for them, and those URLs are absolute."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse

from models_app.api.serializers import AssetSerializer
from models_app.media_access import media_token, media_url
from models_app.models import Asset
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def images():
    model = ModelFactory()
    add_images(model, 2)
    return model, list(model.training_images.select_related("asset"))


def local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def test_the_api_hands_out_absolute_signed_urls_that_serve_the_file(images) -> None:
    model, [first, _] = images
    client = api_client_for(model.team)
    listing = client.get(f"/v1/models/{model.public_id}/training-images").json()["results"]
    url = listing[0]["download_url"]
    assert url.startswith("http://testserver/media/assets/") and "token=" in url
    response = client.get(local(url))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == first.asset.file.open("rb").read()
    asset = client.get(f"/v1/assets/{first.public_id}").json()["asset"]
    assert client.get(local(asset["download_url"])).status_code == 200


def test_bare_altered_foreign_and_expired_media_urls_are_refused(images, client, settings) -> None:
    _, [first, second] = images
    path = first.asset.file.url
    assert client.get(path).status_code == 403
    token = media_token(first.asset.file.name)
    assert client.get(f"{path}?token={token}").status_code == 200
    assert client.get(f"{path}?token={token[:-2]}xx").status_code == 403
    assert client.get(f"{path}?token={media_token(second.asset.file.name)}").status_code == 403
    assert client.get(f"{second.asset.file.url}?token={token}").status_code == 403
    # An expired URL: any age is over a negative limit (no clock needed).
    settings.MEDIA_URL_MAX_AGE_SECONDS = -1
    assert client.get(f"{path}?token={token}").status_code == 403
    assert "expired" in client.get(f"{path}?token={token}").content.decode()


def test_urls_made_without_a_request_are_absolute_from_public_base_url(images, settings) -> None:
    settings.PUBLIC_BASE_URL = "https://train.example.com/"
    _, [first, _] = images
    serialized = AssetSerializer(Asset.objects.get(pk=first.asset_id)).data  # as the MCP server serializes
    url = urlsplit(serialized["download_url"])
    assert (url.scheme, url.netloc) == ("https", "train.example.com")
    assert parse_qs(url.query)["token"] == [media_token(first.asset.file.name)]


def test_admin_pages_link_signed_urls(images, admin_client) -> None:
    model, [first, _] = images
    page = admin_client.get(reverse("admin:models_app_model_change", args=[model.pk])).content.decode()
    relative = media_url(first.asset.file, absolute=False)
    assert relative.startswith("/media/") and relative.split("?")[0] + "?token=" in page
