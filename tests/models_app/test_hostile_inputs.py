"""A hostile-input corpus, generated here: every write path of every interface (REST, seed 003, the tool
endpoint, MCP, the admin console, `import_dataset`) meets control characters, unpaired surrogates,
over-long and mistyped values, broken URLs, escaping paths and malformed documents. Each answer is a 4xx
(or a command error) naming the problem, and nothing is written: no row, no file, no changed field."""

from __future__ import annotations

import asyncio
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from models_app.models import Asset, GenerationJob, Model, Pair, TrainingImage, TrainingTask, WebhookDelivery
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for, media_files, png

pytestmark = pytest.mark.django_db


def snapshot() -> tuple[Any, ...]:
    """Every row count, every file, and the fields a refused write could have touched."""
    rows = tuple(m.objects.count() for m in (Model, Asset, TrainingImage, Pair, TrainingTask, GenerationJob))
    fields = tuple(Model.objects.order_by("pk").values_list("name", "short_description", "trigger_word", "parameters"))
    captions = tuple(TrainingImage.objects.order_by("pk").values_list("asset_id", "description"))
    return rows, WebhookDelivery.objects.count(), len(media_files(settings.MEDIA_ROOT)), fields, captions


# Hostile values for a text field: (label, value, what the answer must say about it).
HOSTILE_TEXT: list[tuple[str, Any, str]] = [
    ("nul", "a\x00b", r"U\+0000"),
    ("escape", "\x1b[2J", r"U\+001B"),
    ("bell", "ding\x07", r"U\+0007"),
    ("delete", "x\x7f", r"U\+007F"),
    ("surrogate", "x\ud800", r"U\+D800"),
    ("huge", "x" * 5_000_001, r"at most|no more than"),
    ("number", 5, r"string"),
    ("boolean", True, r"string"),
    ("list", ["x"], r"string|list"),
    ("object", {"x": 1}, r"string|object"),
]


@dataclass(frozen=True)
class Field:
    """A text field of a write path: where the value goes, and the name the answer must use for it."""

    label: str
    method: str
    path: str
    body: dict[str, Any]  # "@" marks where the hostile value goes
    names: str  # a regex: the field as the answer may name it


TEXT_FIELDS = [
    Field("model name", "post", "/v1/models", {"name": "@"}, r"name"),
    Field("model description", "post", "/v1/models", {"name": "n", "shortDescription": "@"}, r"short_?[dD]escription"),
    Field("trigger word", "post", "/v1/models", {"name": "n", "trigger_word": "@"}, r"trigger_word"),
    Field("rename", "patch", "/v1/models/{m}", {"name": "@"}, r"name"),
    Field("caption", "put", "/v1/models/{m}/training-images/{i}", {"description": "@"}, r"description"),
    Field("asset id", "post", "/v1/models/{m}/training-images", {"assetId": "@"}, r"asset_?[iI]d"),
    Field(
        "pair instruction",
        "put",
        "/v1/models/{m}/training-images/pairs",
        {"pairs": [{"source_id": "{i}", "target_id": "{j}", "instruction": "@"}]},
        r"instruction",
    ),
    Field("prompt", "post", "/v1/images/generation", {"modelID": "{m}", "prompt": "@"}, r"prompt"),
    Field("sample prompt", "patch", "/v1/models/{m}", {"parameters": {"sample_prompts": ["@"]}}, r"sample_prompts"),
    Field("webhook", "patch", "/v1/models/{m}", {"parameters": {"webhook_url": "@"}}, r"webhook_url"),
    Field("seed trigger", "post", "/api/v1/training/", {"trigger_word": "@"}, r"trigger_word"),
    Field(
        "seed origin",
        "post",
        "/api/v1/training/",
        {"trigger_word": "x", "entity_id": "{u}", "origin_instance": "@"},
        r"origin_instance",
    ),
    Field(
        "tool caption",
        "post",
        "/v1/tools/train",
        {"action": "update_image", "model_id": "{m}", "training_image_id": "{i}", "image_data": {"description": "@"}},
        r"description",
    ),
    Field(
        "tool config",
        "post",
        "/v1/tools/train",
        {"action": "configure", "model_id": "{m}", "config": {"preprocessing_captioning_prompt": "@"}},
        r"preprocessing_captioning_prompt",
    ),
    Field("tool team", "post", "/v1/tools/train", {"action": "start", "model_id": "{m}", "team_id": "@"}, r"team_id"),
]


@pytest.fixture
def model(tiny_sd15: Path) -> Model:
    model = ModelFactory(parameters={"steps": 10})
    add_images(model, 2)
    return model


def fill(value: Any, ids: dict[str, str], hostile: Any = None) -> Any:
    if value == "@":
        return hostile
    if isinstance(value, str):
        for key, real in ids.items():
            value = value.replace("{" + key + "}", real)
        return value
    if isinstance(value, dict):
        return {k: fill(v, ids, hostile) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids, hostile) for v in value]
    return value


def ids_of(model: Model) -> dict[str, str]:
    images = [image.public_id for image in model.training_images.select_related("asset")]
    return {"m": model.public_id, "u": str(model.uuid), "i": images[0], "j": images[1]}


def send(model: Model, method: str, path: str, body: Any) -> tuple[int, str]:
    """The raw JSON request (ASCII-escaped, so that an unpaired surrogate travels as JSON allows)."""
    client = api_client_for(model.team)
    response = client.generic(method.upper(), path, json.dumps(body), content_type="application/json")
    return response.status_code, response.content.decode()


def assert_refused(status: int, text: str, *patterns: str) -> None:
    assert 400 <= status < 500 and status not in (401, 403), (status, text[:500])
    for pattern in patterns:
        assert re.search(pattern, text), (pattern, text[:500])


@pytest.mark.parametrize("hostile", HOSTILE_TEXT, ids=[h[0] for h in HOSTILE_TEXT])
@pytest.mark.parametrize("field", TEXT_FIELDS, ids=[f.label for f in TEXT_FIELDS])
def test_hostile_text_is_refused_naming_the_field_and_the_problem(model: Model, field: Field, hostile) -> None:
    _, value, problem = hostile
    ids = ids_of(model)
    before = snapshot()
    status, text = send(model, field.method, fill(field.path, ids), fill(field.body, ids, value))
    assert_refused(status, text, field.names, problem)
    assert snapshot() == before


HOSTILE_URLS: list[tuple[str, str]] = [
    ("http://example.com:99999/a.png", r"Port out of range"),
    ("http://example.com:0/a.png", r"port 0"),
    ("http://[::1/a.png", r"Invalid IPv6 URL"),
    ("http://exa mple.com/a.png", r"white space"),
    ("http:///a.png", r"has no host"),
    ("file:///etc/passwd", r"only http and https"),
    ("gopher://example.com/", r"only http and https"),
    ("http://127.0.0.1/a.png", r"private, loopback or link-local"),
    ("http://169.254.169.254/latest/meta-data/", r"private, loopback or link-local"),
    ("http://[::ffff:10.0.0.1]/a.png", r"private, loopback or link-local"),
    ("http://0177.0.0.1/a.png", r"private, loopback or link-local"),
    ("http://metadata.google.internal/", r"private, loopback or link-local"),
    ("https://example.com/" + "a" * 2100, r"(at most|no more than) 2000 characters"),
]

URL_FIELDS = [
    Field("image url", "post", "/v1/models/{m}/training-images", {"url": "@"}, r"url"),
    Field("asset url", "post", "/v1/assets", {"url": "@"}, r"url"),
    Field(
        "tool image",
        "post",
        "/v1/tools/train",
        {"action": "upload_images", "model_id": "{m}", "images": ["@"]},
        r"images\[0\]",
    ),
    Field("seed image", "post", "/api/v1/training/", {"trigger_word": "x", "source_images": ["@"]}, r"source_images"),
    Field("webhook", "patch", "/v1/models/{m}", {"parameters": {"webhook_url": "@"}}, r"webhook_url"),
]


@pytest.mark.parametrize("hostile", HOSTILE_URLS, ids=[u[0][:40] for u in HOSTILE_URLS])
@pytest.mark.parametrize("field", URL_FIELDS, ids=[f.label for f in URL_FIELDS])
def test_hostile_urls_are_refused(model: Model, field: Field, hostile, settings) -> None:
    url, problem = hostile
    if field.label == "webhook" and problem.startswith("only http"):
        problem = r"only http and https"
    ids = ids_of(model)
    before = snapshot()
    status, text = send(model, field.method, fill(field.path, ids), fill(field.body, ids, url))
    assert_refused(status, text, field.names, problem)
    assert snapshot() == before


HOSTILE_PATHS: list[tuple[str, str]] = [
    ("~nosuchuser/a.png", r"home-directory paths"),
    ("~/a.png", r"home-directory paths"),
    ("../../etc/passwd", r"'\.\.' is not allowed"),
    ("shots/../../../etc/passwd", r"'\.\.' is not allowed"),
    ("/etc/passwd", r"outside the"),
    ("/", r"outside the"),
    ("p" * 600, r"at most 500 characters"),
]

PATH_FIELDS = [
    Field(
        "tool image",
        "post",
        "/v1/tools/train",
        {"action": "upload_images", "model_id": "{m}", "images": ["@"]},
        r"images\[0\]",
    ),
    Field("seed image", "post", "/api/v1/training/", {"trigger_word": "x", "source_images": ["@"]}, r"source_images"),
    Field(
        "base model", "post", "/v1/models", {"name": "n", "parameters": {"base_model_path": "@"}}, r"base_model_path"
    ),
    Field(
        "base model dry run",
        "put",
        "/v1/models/{m}/train?dryRun=true",
        {"parameters": {"base_model_path": "@"}},
        r"base_model_path",
    ),
]


@pytest.mark.parametrize("hostile", HOSTILE_PATHS, ids=[p[0][:30] for p in HOSTILE_PATHS])
@pytest.mark.parametrize("field", PATH_FIELDS, ids=[f.label for f in PATH_FIELDS])
def test_paths_that_escape_are_refused(model: Model, field: Field, hostile, settings, tmp_path: Path) -> None:
    path, problem = hostile
    settings.TRAINING_IMPORT_ROOTS = [tmp_path / "imports"]
    ids = ids_of(model)
    before = snapshot()
    status, text = send(model, field.method, fill(field.path, ids), fill(field.body, ids, path))
    assert_refused(status, text, field.names, problem)
    assert snapshot() == before


MALFORMED_BODIES: list[tuple[str, str, bytes, str, str]] = [
    ("deep list", "/v1/models", b"[" * 3000 + b"]" * 3000, "application/json", r"nested deeper"),
    ("deep object", "/v1/tools/train", b'{"a":' * 50 + b"1" + b"}" * 50, "application/json", r"nested deeper"),
    (
        "deep seed",
        "/api/v1/training/",
        b'{"trigger_word": "x", "preprocessing_transforms": [' + b"[" * 40 + b"]" * 40 + b"]}",
        "application/json",
        r"nested deeper",
    ),
    ("nul key", "/v1/models", b'{"na\\u0000me": "x"}', "application/json", r"U\+0000"),
    ("bad utf-8", "/v1/models", b'{"name": "\xff"}', "application/json", r"JSON parse error"),
    ("truncated", "/v1/models", b'{"name": "x"', "application/json", r"JSON parse error"),
    (
        "nan",
        "/v1/models",
        b'{"name": "x", "parameters": {"learning_rate": NaN}}',
        "application/json",
        r"JSON parse error",
    ),
    (
        "huge int",
        "/v1/models",
        b'{"name": "x", "parameters": {"steps": 1' + b"0" * 5000 + b"}}",
        "application/json",
        r"JSON parse error|digits",
    ),
    (
        "infinity",
        "/v1/models",
        b'{"name": "x", "parameters": {"learning_rate": 1e400}}',
        "application/json",
        r"learning_rate",
    ),
    ("xml", "/v1/models", b"<name>x</name>", "application/xml", r"Unsupported media type"),
    ("form nul", "/v1/models", b"name=a%00b", "application/x-www-form-urlencoded", r"U\+0000"),
    ("tool list", "/v1/tools/train", b"[1, 2]", "application/json", r"arguments must be an object"),
    ("seed string", "/api/v1/training/", b'"x"', "application/json", r"trigger_word|dictionary"),
]


@pytest.mark.parametrize("case", MALFORMED_BODIES, ids=[c[0] for c in MALFORMED_BODIES])
def test_malformed_documents_are_refused(model: Model, case) -> None:
    _, path, body, content_type, problem = case
    before = snapshot()
    response = api_client_for(model.team).generic("POST", path, body, content_type=content_type)
    assert_refused(response.status_code, response.content.decode(), problem)
    assert snapshot() == before


HOSTILE_QUERIES = [
    ("/v1/models?status=%00", r"status.*U\+0000"),
    ("/v1/models?projectId=%1b", r"projectId.*U\+001B"),
    ("/v1/models?page=%00", r"U\+0000"),
    ("/v1/models?page=99999999999999999999999", r"Invalid page"),
    ("/v1/models?status=" + "s" * 3000, r"at most 2000 characters"),
    ("/api/v1/training/?skip=100000000000000000000", r"skip"),
    ("/api/v1/training/?limit=-1", r"limit"),
    ("/api/v1/training/?limit=%00", r"U\+0000"),
    ("/v1/models/%00", r"U\+0000"),
    ("/v1/models/%7f/training-images", r"U\+007F"),
    ("/v1/jobs/%00", r"U\+0000"),
    ("/v1/assets/%1f", r"U\+001F"),
    ("/api/v1/training/%00/cancel", r"U\+0000"),
    ("/v1/models?format=AAA", r"format 'AAA'"),
]


@pytest.mark.parametrize("case", HOSTILE_QUERIES, ids=[c[0][:40] for c in HOSTILE_QUERIES])
def test_hostile_paths_and_query_strings_are_refused(model: Model, case) -> None:
    path, problem = case
    before = snapshot()
    client = api_client_for(model.team)
    response = client.post(path) if path.endswith("/cancel") else client.get(path)
    assert_refused(response.status_code, response.content.decode(), problem)
    assert snapshot() == before


def test_hostile_multipart_uploads_are_refused(model: Model) -> None:
    client = api_client_for(model.team)
    m = model.public_id
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("not an image", {"file": ("a.png", b"not an image")}, r"not an image this server can read"),
        ("truncated", {"file": ("a.png", png((128, 128))[:200])}, r"damaged or truncated|not an image"),
        ("too small", {"file": ("a.png", png((16, 16)))}, r"16x16 pixels"),
        ("empty", {"file": ("a.png", b"")}, r"empty|submitted file is empty"),
        ("gif", {"file": ("a.gif", png(fmt="GIF"))}, r"GIF image; accepted formats"),
        ("caption nul", {"file": ("a.png", png()), "description": "a\x00b"}, r"description.*U\+0000"),
        ("caption long", {"file": ("a.png", png()), "description": "c" * 2001}, r"description"),
        ("name escape", {"file": ("a.png", png()), "name": "\x1bname.png"}, r"name.*U\+001B"),
    ]
    for label, fields, problem in cases:
        data = {key: (io.BytesIO(value[1]) if isinstance(value, tuple) else value) for key, value in fields.items()}
        for key, value in fields.items():
            if isinstance(value, tuple):
                data[key].name = value[0]
        before = snapshot()
        response = client.post(f"/v1/models/{m}/training-images", data, format="multipart")
        assert_refused(response.status_code, response.content.decode(), problem), label
        assert snapshot() == before, label


def test_hostile_admin_console_inputs_are_refused(model: Model, admin_client) -> None:
    image = model.training_images.first()
    upload = reverse("admin:models_app_model_upload", args=[model.pk])
    pairs = reverse("admin:models_app_model_pairs", args=[model.pk])
    caption = reverse("admin:models_app_model_caption", args=[model.pk, image.pk])
    replace = reverse("admin:models_app_model_replace_image", args=[model.pk, image.pk])

    def upload_file(name: str, content: bytes) -> io.BytesIO:
        handle = io.BytesIO(content)
        handle.name = name
        return handle

    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("upload non-image", upload, {"images": [upload_file("a.png", b"<svg/>")]}, r"not an image"),
        ("upload too small", upload, {"images": [upload_file("a.png", png((8, 8)))]}, r"8x8 pixels"),
        (
            "upload one bad of two",
            upload,
            {"images": [upload_file("a.png", png()), upload_file("b.png", b"x")]},
            r"b\.png",
        ),
        ("upload nothing", upload, {}, r"choose or drop"),
        ("replace too small", replace, {"image": upload_file("a.png", png((8, 8)))}, r"8x8 pixels"),
        ("caption nul", caption, {"description": "a\x00"}, r"U\+0000"),
        ("caption long", caption, {"description": "c" * 2001}, r"at most 2000 characters"),
        ("pairs not a list", pairs, {"pairs": '{"a": 1}'}, r"pairs must be a JSON list"),
        ("pairs deep", pairs, {"pairs": "[" * 3000 + "]" * 3000}, r"pairs"),
    ]
    for label, url, data, problem in cases:
        before = snapshot()
        response = admin_client.post(url, data)
        assert_refused(response.status_code, response.content.decode(), problem), label
        assert snapshot() == before, label


def test_hostile_parameters_on_the_admins_model_form_are_refused(model: Model, admin_client) -> None:
    change = reverse("admin:models_app_model_change", args=[model.pk])
    form = {"name": model.name, "type": model.type, "trigger_word": model.trigger_word, "parameter_steps": "10"}
    form.update({f"training_tasks-{key}": value for key, value in (("TOTAL_FORMS", "0"), ("INITIAL_FORMS", "0"))})
    cases = [
        ("transforms deep", "preprocessing_transforms", "[" * 3000 + "]" * 3000, r"preprocessing_transforms"),
        ("prompt nul", "sample_prompts", "a\x00", r"U\+0000"),
        ("webhook private", "webhook_url", "http://10.0.0.1/", r"private"),
        ("base outside", "base_model_path", "/etc", r"outside the"),
    ]
    for label, parameter, value, problem in cases:
        before = snapshot()
        response = admin_client.post(change, {**form, f"parameter_{parameter}": value})
        assert response.status_code == 200, label  # the form again, with the refusal on the field
        errors = response.context["adminform"].form.errors
        assert list(errors) == [f"parameter_{parameter}"], label
        assert re.search(problem, errors[f"parameter_{parameter}"][0]), label
        assert snapshot() == before, label


def test_hostile_folders_for_import_dataset_are_refused(model: Model, tmp_path: Path) -> None:
    folder = tmp_path / "shoot"
    folder.mkdir()
    (folder / "fake.png").write_bytes(b"not a png")
    (folder / "tiny.png").write_bytes(png((10, 10)))
    (folder / "cut.jpg").write_bytes(png((128, 128), fmt="JPEG")[:300])
    (folder / "nul.png").write_bytes(png(colour="blue"))
    (folder / "nul.txt").write_text("a caption with a \x00 in it")
    (folder / "long.png").write_bytes(png(colour="green"))
    (folder / "long.txt").write_text("c" * 2001)
    (folder / "bell.png").write_bytes(png(colour="white"))
    (folder / "bell.txt").write_text("ding \x07")
    before = snapshot()
    out = io.StringIO()
    with pytest.raises(CommandError, match="no image was imported"):
        call_command("import_dataset", str(folder), "--model-id", model.public_id, stdout=out)
    report = out.getvalue()
    for name, problem in [
        ("fake.png", r"not an image"),
        ("tiny.png", r"10x10 pixels"),
        ("cut.jpg", r"damaged or truncated|not an image"),
        ("nul.png", r"U\+0000"),
        ("long.png", r"at most 2000 characters"),
        ("bell.png", r"U\+0007"),
    ]:
        assert re.search(rf"skipped {re.escape(name)}: .*({problem})", report), (name, report)
    assert snapshot() == before
    for arguments, problem in [
        ([str(tmp_path / "missing"), "--model-id", model.public_id], r"is not a folder"),
        (["~nosuchuser/shoot", "--model-id", model.public_id], r"is not a folder"),
        ([str(folder), "--model-id", "model_\x00"], r"not found"),
    ]:
        with pytest.raises(CommandError, match=problem):
            call_command("import_dataset", *arguments, stdout=io.StringIO())
    assert snapshot() == before


def test_hostile_train_command_arguments_are_refused(model: Model) -> None:
    before = snapshot()
    for arguments, problem in [
        (["configure", "--model-id", model.public_id, "--config", "[" * 3000 + "]" * 3000], r"config"),
        (["configure", "--model-id", model.public_id, "--config", '{"webhook_url": "http://127.0.0.1/"}'], r"private"),
        (["configure", "--model-id", model.public_id, "--config", '{"sample_prompts": ["\\u0000"]}'], r"U\+0000"),
        (["configure", "--model-id", model.public_id, "--config", '{"base_model_path": "~x/m"}'], r"home-directory"),
        (["start", "--model-id", "model_\x00"], r"U\+0000"),
    ]:
        with pytest.raises(CommandError, match=problem):
            call_command("train", *arguments, stdout=io.StringIO())
    assert snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_hostile_mcp_calls_are_refused(tiny_sd15: Path) -> None:
    from asgiref.sync import ThreadSensitiveContext, sync_to_async
    from django.db import connections
    from mcp import Client

    from models_app.mcp_server import build_server

    model = ModelFactory(parameters={"steps": 10})
    add_images(model, 2)
    ids = ids_of(model)
    team = model.team
    server = build_server(lambda: team)
    calls: list[tuple[str, str, dict[str, Any], str]] = []
    for label, value, problem in HOSTILE_TEXT:
        calls += [
            (f"model name {label}", "model_create", {"name": value}, problem),
            (
                f"tool caption {label}",
                "train",
                fill(
                    {
                        "action": "update_image",
                        "model_id": "{m}",
                        "training_image_id": "{i}",
                        "image_data": {"description": "@"},
                    },
                    ids,
                    value,
                ),
                problem,
            ),
            (f"prompt {label}", "run_model", {"model_id": ids["m"], "prompt": value}, problem),
        ]
    calls += [
        (
            "unknown argument",
            "train",
            {"action": "start", "model_id": ids["m"], "dryRun": True},
            r"unknown argument 'dryRun'; the tool takes: action, model_id",
        ),
        (
            "dry_run yes",
            "train",
            {"action": "start", "model_id": ids["m"], "dry_run": "yes"},
            r"dry_run must be true or false",
        ),
        (
            "dry_run 1",
            "train",
            {"action": "start", "model_id": ids["m"], "dry_run": 1},
            r"dry_run must be true or false",
        ),
        (
            "width as text",
            "run_model",
            {"model_id": ids["m"], "prompt": "p", "width": "512"},
            r"width must be an integer",
        ),
        ("unknown on get", "model_get", {"model_id": ids["m"], "verbose": True}, r"unknown argument 'verbose'"),
        (
            "bad format",
            "model_get",
            {"model_id": ids["m"], "response_format": "xml"},
            r"response_format must be one of",
        ),
        (
            "deep config",
            "train",
            {"action": "configure", "model_id": ids["m"], "config": json.loads("[" * 40 + "]" * 40)},
            r"nested deeper",
        ),
        (
            "tool path",
            "train",
            {"action": "upload_images", "model_id": ids["m"], "images": ["~nosuchuser/a.png"]},
            r"home-directory",
        ),
        (
            "tool url",
            "train",
            {"action": "upload_images", "model_id": ids["m"], "images": ["http://[::1/a.png"]},
            r"Invalid IPv6",
        ),
        (
            "webhook",
            "train",
            {"action": "configure", "model_id": ids["m"], "config": {"webhook_url": "http://10.0.0.1/"}},
            r"private",
        ),
        ("asset url", "upload_asset", {"image": "http://example.com:99999/a.png"}, r"Port out of range"),
        ("id nul", "model_get", {"model_id": "model_\x00"}, r"U\+0000"),
        ("job id nul", "job_status", {"job_id": "job_\x00"}, r"U\+0000"),
        ("missing", "train", {"action": "start"}, r"model_id"),
    ]
    assert len(calls) >= 40

    async def run() -> list[tuple[str, bool, str]]:
        answers = []
        # The tools' database work runs in this context's own thread, which ends with the context.
        async with ThreadSensitiveContext():
            async with Client(server) as client:
                for label, tool, arguments, _ in calls:
                    result = await client.call_tool(tool, arguments)
                    answers.append((label, bool(result.is_error), result.content[0].text))
            await sync_to_async(connections.close_all)()
        return answers

    before = snapshot()
    answers = asyncio.run(asyncio.wait_for(run(), timeout=120))
    wrong = [
        (label, is_error, text[:300])
        for (label, is_error, text), (_, _, _, problem) in zip(answers, calls, strict=True)
        if not is_error or not re.search(problem, text) or not re.match(r"Error executing tool \w+: 4\d\d ", text)
    ]
    assert wrong == []
    assert snapshot() == before


def test_the_corpus_has_at_least_a_hundred_inputs() -> None:
    total = (
        len(HOSTILE_TEXT) * len(TEXT_FIELDS)
        + len(HOSTILE_URLS) * len(URL_FIELDS)
        + len(HOSTILE_PATHS) * len(PATH_FIELDS)
        + len(MALFORMED_BODIES)
        + len(HOSTILE_QUERIES)
    )
    assert total >= 100, total


def test_the_admin_change_forms_hold_text_to_the_same_rules(model: Model, admin_client) -> None:
    image = model.training_images.first()
    url = reverse("admin:models_app_model_change", args=[model.pk])
    form = {"name": "n", "team": model.team.pk, "type": model.type, "trigger_word": "zxq"}
    inline = {
        "training_tasks-TOTAL_FORMS": "0",
        "training_tasks-INITIAL_FORMS": "0",
        "training_tasks-MIN_NUM_FORMS": "0",
        "training_tasks-MAX_NUM_FORMS": "1000",
    }
    for field, value, problem in [
        ("short_description", "d\x1b", r"U\+001B"),
        ("short_description", "d" * 5001, r"at most 5000 characters"),
        ("name", "n\x07", r"U\+0007"),
        ("trigger_word", "z\tq", r"U\+0009"),
    ]:
        before = snapshot()
        response = admin_client.post(url, {**form, **inline, field: value})
        assert response.status_code == 200  # the form again, with the error
        assert re.search(problem, response.content.decode()), (field, problem)
        assert snapshot() == before
    before = snapshot()
    caption = reverse("admin:models_app_trainingimage_change", args=[image.pk])
    response = admin_client.post(caption, {"description": "c\x00"})
    assert response.status_code == 200
    assert snapshot() == before
