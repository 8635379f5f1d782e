"""API keys: a read may reuse a recent lookup of its key (API_KEY_CACHE_SECONDS); a write never does."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from models_app.models import ApiKey
from models_app.services.accounts import api_key_authenticate, api_key_create, api_key_revoke
from tests.factories import ModelFactory

pytestmark = pytest.mark.django_db


def key_queries(client: APIClient, method: str, path: str, **body: object) -> int:
    """The queries a request makes on the API key table (and checks it answered 2xx)."""
    with CaptureQueriesContext(connection) as captured:
        response = getattr(client, method)(path, body or None, format="json")
    assert response.status_code < 300, response.content
    return sum('FROM "models_app_apikey"' in query["sql"] for query in captured)


def bearer(api_key: ApiKey, secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key.key}.{secret}")
    return client


def test_a_read_reuses_a_recent_lookup_and_a_write_always_reads_the_key(settings) -> None:
    settings.API_KEY_CACHE_SECONDS = 60
    model = ModelFactory()
    api_key, secret = api_key_create(team=model.team)
    client = bearer(api_key, secret)
    path = f"/v1/models/{model.public_id}"
    assert key_queries(client, "get", path) == 1
    assert key_queries(client, "get", path) == 0
    assert key_queries(client, "patch", path, name="renamed") == 1
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at is not None


def test_no_reuse_when_turned_off(settings) -> None:
    settings.API_KEY_CACHE_SECONDS = 0
    model = ModelFactory()
    client = bearer(*api_key_create(team=model.team))
    for _ in range(2):
        assert key_queries(client, "get", f"/v1/models/{model.public_id}") == 1


def test_a_known_key_with_a_wrong_secret_is_refused(settings) -> None:
    settings.API_KEY_CACHE_SECONDS = 60
    model = ModelFactory()
    api_key, secret = api_key_create(team=model.team)
    assert bearer(api_key, secret).get(f"/v1/models/{model.public_id}").status_code == 200
    response = bearer(api_key, secret[:-1] + ("A" if secret[-1] != "A" else "B")).get(f"/v1/models/{model.public_id}")
    assert response.status_code == 401
    assert api_key_authenticate(key=api_key.key, secret="", fresh=False) is None


def test_a_revoked_key_is_refused_at_once_by_the_process_that_revoked_it(settings) -> None:
    settings.API_KEY_CACHE_SECONDS = 60
    model = ModelFactory()
    api_key, secret = api_key_create(team=model.team)
    client = bearer(api_key, secret)
    assert client.get(f"/v1/models/{model.public_id}").status_code == 200
    api_key_revoke(api_key=api_key)
    assert client.get(f"/v1/models/{model.public_id}").status_code == 401


def test_each_request_gets_its_own_copy_of_the_key_and_team(settings) -> None:
    settings.API_KEY_CACHE_SECONDS = 60
    model = ModelFactory()
    api_key, secret = api_key_create(team=model.team)
    first = api_key_authenticate(key=api_key.key, secret=secret, fresh=False)
    assert first is not None
    first.team.name = "changed by one request"
    second = api_key_authenticate(key=api_key.key, secret=secret, fresh=False)
    assert second is not None
    assert second is not first and second.team is not first.team
    assert second.team.name == model.team.name
