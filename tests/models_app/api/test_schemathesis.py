"""Property-based conformance over the whole published schema (schemathesis): a bounded number of
generated requests per operation, with valid and invalid data, must never meet a 5xx, and every answer
must be documented (status, content type, body schema)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config.wsgi import application
from tests.factories import ModelFactory, add_images, api_token

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Enough to reach every field of every operation with valid and invalid values, few enough for CI.
# SCHEMATHESIS_EXAMPLES raises it for a deeper run by hand.
EXAMPLES_PER_OPERATION = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))


@pytest.fixture
def headers(db, tiny_sd15) -> Iterator[dict[str, str]]:
    model = ModelFactory()
    add_images(model, 2)
    # Requests reach the WSGI application directly: as Django's test client does, keep the request
    # signals from closing the test's database connection (and its transaction) after each one.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield {"Authorization": f"Bearer {api_token(model.team)}"}
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@schema.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_conforms_to_its_schema(case, headers: dict[str, str]) -> None:
    response = case.call(headers=headers)
    case.validate_response(response, checks=CHECKS)
