"""Every request example of the API pages (seed 004's training images and pairs, seed 003's training tasks, the
`train` tool) runs as written: each `curl` line of the page's shell block is read (method, path, body, form
fields), the page's placeholders are filled with real ids (`model_…`, `asset_…`, `<task id>`), and the request
is made through the test client with the same credentials ($AUTH: a team's API key; $TOKEN: the demo user's
JWT). Seed 002's walkthrough and the README's tour have their own tests (tests/test_docs.py, the demo's)."""

from __future__ import annotations

import base64
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from models_app.models import Membership, Model
from models_app.services.accounts import membership_set
from tests.factories import ModelFactory, TeamFactory, api_token
from tests.helpers import png

pytestmark = pytest.mark.django_db

DOCS = Path(settings.BASE_DIR) / "docs" / "api"
# An example that cannot run here, and why: the machines of the suite reach no outside host.
NEEDS_THE_INTERNET = "https://example.com/a.jpg"


@dataclass
class Curl:
    method: str
    path: str
    body: str | None = None
    form: dict[str, str] = field(default_factory=dict)


def curl_commands(page: str) -> list[Curl]:
    """The page's curl commands, in order (continuation lines joined, comments and shell assignments skipped)."""
    block = re.search(r"```sh\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.S)
    assert block is not None, page
    joined = re.sub(r"\\\n\s*", " ", block.group(1))
    commands = []
    for line in joined.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("TOKEN=$(curl"):
            line = line[len("TOKEN=$(") : line.index(" | python3")]
        if not line.startswith("curl "):
            continue
        # "<task id>" is one placeholder, though the shell would split it.
        words = shlex.split(line.replace("$BASE", "BASE").replace("<task id>", "<task-id>"), posix=True)
        command = Curl(method="", path="")
        index = 1
        while index < len(words):
            word = words[index]
            if word == "-X":
                command.method, index = words[index + 1], index + 2
            elif word == "-H":  # the credentials are the client's (see the tests)
                index += 2
            elif word == "-d":
                command.body, index = words[index + 1], index + 2
            elif word == "-F":
                name, _, value = words[index + 1].partition("=")
                command.form[name], index = value, index + 2
            elif word.startswith("BASE"):
                command.path, index = word[len("BASE") :], index + 1
            else:
                index += 1
        command.method = command.method or ("POST" if command.body is not None or command.form else "GET")
        commands.append(command)
    return commands


class Placeholders:
    """Fills the pages' placeholders with this test's real ids: `model_…`, `<task id>`, a data URL's `…`, and
    `asset_…` as the request means it: images not yet in the model where one is added (`assetId`, `images`,
    seed 003's `source_images`), the model's own training images where one is named (a path, a pair)."""

    def __init__(self, model: Model, assets: list[str]) -> None:
        self.model = model
        self.fresh = iter(assets)
        self.assets = assets
        self.task_id = ""

    def in_model(self) -> list[str]:
        return [image.public_id for image in self.model.training_images.order_by("pk")]

    def fill(self, text: str, *, names_own_images: bool) -> str:
        text = text.replace("model_…", self.model.public_id).replace("<task-id>", self.task_id)
        text = text.replace("data:image/png;base64,…", "data:image/png;base64," + base64.b64encode(png()).decode())
        # A list written ["asset_…", "…"] means "as many as it takes": seed 003's start needs 12.
        if '["asset_…", "…"]' in text:
            text = text.replace('["asset_…", "…"]', json.dumps([next(self.fresh) for _ in range(12)]))
        own = iter(self.in_model())
        return re.sub(r"asset_…", lambda _match: next(own) if names_own_images else next(self.fresh), text)


def perform(client: APIClient, command: Curl, placeholders: Placeholders) -> Any:
    path = placeholders.fill(command.path, names_own_images=True)
    if command.form:
        data: dict[str, Any] = {}
        for name, value in command.form.items():
            if value.startswith("@"):
                data[name] = SimpleUploadedFile(Path(value[1:]).name, png(), content_type="image/png")
            else:
                data[name] = value.strip("'\"")
        return getattr(client, command.method.lower())(path, data, format="multipart")
    body = command.body
    if body is not None:
        body = placeholders.fill(body, names_own_images='"pairs"' in body)
    return client.generic(command.method, path, body or "", content_type="application/json")


@pytest.fixture
def team_model_and_assets(tiny_sd15: Path) -> tuple[APIClient, Model, list[str]]:
    team = TeamFactory()
    model = ModelFactory(team=team)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token(team)}")
    assets = []
    for index in range(16):
        answer = client.post(
            "/v1/assets",
            {"file": SimpleUploadedFile(f"a{index}.png", png(colour=f"#{index:02x}4080"))},
            format="multipart",
        )
        assert answer.status_code in (200, 201), answer.content
        assets.append(answer.json()["asset"]["id"])
    return client, model, assets


def test_the_seed_004_examples_run_as_written(team_model_and_assets) -> None:
    client, model, assets = team_model_and_assets
    placeholders = Placeholders(model, assets)
    commands = curl_commands("seed-004-images-and-pairs.md")
    assert len(commands) == 8
    ran = 0
    for command in commands:
        if command.body is not None and NEEDS_THE_INTERNET in command.body:
            continue
        answer = perform(client, command, placeholders)
        assert answer.status_code in (200, 201, 204), (command, answer.content)
        ran += 1
    assert ran == 7 and model.training_images.count() > 0


def test_the_seed_003_examples_run_as_written(team_model_and_assets) -> None:
    _client, model, assets = team_model_and_assets
    user = get_user_model().objects.create_user(username="demo", password="demo")
    membership_set(team=model.team, user=user, role=Membership.Role.OWNER)
    placeholders = Placeholders(model, assets)
    token_request, create, listing, detail, cancel = curl_commands("seed-003-training-tasks.md")
    anonymous = APIClient()
    token = perform(anonymous, token_request, placeholders)
    assert token.status_code == 200, token.content
    with_jwt = APIClient()
    with_jwt.credentials(HTTP_AUTHORIZATION=f"Bearer {token.json()['access']}")
    created = perform(with_jwt, create, placeholders)
    assert created.status_code in (200, 201), created.content
    assert created.json()["status"] == "PENDING" and created.json()["steps"] == 1500
    placeholders.task_id = created.json()["id"]
    listed = perform(with_jwt, listing, placeholders)
    assert listed.status_code == 200 and placeholders.task_id in json.dumps(listed.json())
    shown = perform(with_jwt, detail, placeholders)
    assert shown.status_code == 200 and shown.json()["id"] == placeholders.task_id, (detail, shown.content)
    cancelled = perform(with_jwt, cancel, placeholders)
    assert cancelled.status_code == 200, cancelled.content
    assert perform(with_jwt, detail, placeholders).json()["status"] in ("CANCELLED", "CANCELED")


def test_the_train_tool_examples_run_as_written(team_model_and_assets) -> None:
    client, model, assets = team_model_and_assets
    placeholders = Placeholders(model, assets)
    upload, configure, start = curl_commands("train-tool.md")
    uploaded = perform(client, upload, placeholders)
    assert uploaded.status_code == 200 and uploaded.json()["status"] == "uploaded", uploaded.content
    assert perform(client, configure, placeholders).status_code == 200
    estimate = perform(client, start, placeholders)
    assert estimate.status_code == 200 and "## Cost estimate (dry run, nothing changed)" in estimate.content.decode()
    model.refresh_from_db()
    assert model.parameters["steps"] == 1200 and model.training_tasks.count() == 0  # the dry run started nothing
