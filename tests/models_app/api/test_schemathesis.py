"""Property-based conformance over the whole published schema (schemathesis): a bounded number of
generated requests per operation, with valid and invalid data, must never meet a 5xx, and every answer
must be documented (status, content type, body schema)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

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
from models_app.models import GenerationJob
from models_app.services.training import training_start
from tests.factories import ModelFactory, add_images, api_token

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Enough to reach every field of every operation with valid and invalid values, few enough for CI.
# SCHEMATHESIS_EXAMPLES raises it for a deeper run by hand.
EXAMPLES_PER_OPERATION = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))


@dataclass
class Caller:
    headers: dict[str, str]
    ids: dict[str, str]  # path parameter -> a real object of the caller's team


@pytest.fixture
def caller(db, tiny_sd15) -> Iterator[Caller]:
    model = ModelFactory()
    add_images(model, 12)
    task = training_start(model=model)
    job = GenerationJob.objects.create(team=model.team, model=model, prompt="p")
    image = model.training_images.select_related("asset").first().public_id
    ids = {
        "model_id": model.public_id,
        "image_id": image,
        "asset_id": image,
        "task_id": str(task.pk),
        "job_id": job.public_id,
    }
    # Requests reach the WSGI application directly: as Django's test client does, keep the request
    # signals from closing the test's database connection (and its transaction) after each one.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield Caller(headers={"Authorization": f"Bearer {api_token(model.team)}"}, ids=ids)
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
def test_the_api_conforms_to_its_schema(case, caller: Caller) -> None:
    # Plain generated ids ("0", "abc") are swapped for real ones, so that operations reach past the
    # lookup; odd ones (punctuation, controls, non-ASCII) stay, to exercise the boundary.
    for name, value in list((case.path_parameters or {}).items()):
        if name in caller.ids and (str(value).isalnum() or not value):
            case.path_parameters[name] = caller.ids[name]
    # Likewise a plain team_id is dropped (a key's team needs none; another team is a 404 by design).
    if case.query and (str(case.query.get("team_id", "")).isalnum() or not case.query.get("team_id")):
        case.query.pop("team_id", None)
    response = case.call(headers=caller.headers)
    case.validate_response(response, checks=CHECKS)
