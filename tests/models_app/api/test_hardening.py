"""Issue 15's cases, one regression test each: every former 500 is a 4xx naming the problem, what should
have been refused is, and a refusal leaves nothing behind."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from django.conf import settings

from models_app.models import Asset, Model, Pair, TrainingImage, TrainingTask, WebhookDelivery
from models_app.services.training import training_start
from tests.factories import MembershipFactory, ModelFactory, UserFactory, add_images
from tests.helpers import api_client_for, media_files, png

pytestmark = pytest.mark.django_db


def counts() -> tuple[int, ...]:
    return (
        Model.objects.count(),
        Asset.objects.count(),
        TrainingImage.objects.count(),
        Pair.objects.count(),
        TrainingTask.objects.count(),
        len(media_files(settings.MEDIA_ROOT)),
    )


@pytest.fixture
def model(tiny_sd15: Path) -> Model:
    model = ModelFactory()
    add_images(model, 12)
    return model


def refused(response, status: int, *phrases: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content)
    body = response.json()
    text = json.dumps(body)
    for phrase in phrases:
        assert phrase in text, body
    return body


# 500s: NUL bytes


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/models/%00"),
        ("patch", "/v1/models/%00"),
        ("delete", "/v1/models/{m}/training-images/%00"),
        ("post", "/v1/jobs/%00/cancel"),
        ("get", "/api/v1/training/%00"),
    ],
)
def test_a_nul_in_a_path_id_is_a_400(model: Model, method: str, path: str) -> None:
    before = counts()
    response = getattr(api_client_for(model.team), method)(path.replace("{m}", model.public_id), {}, format="json")
    body = refused(response, 400, "control character (U+0000)")
    assert body["code"] == "invalid_characters"
    assert counts() == before


def test_a_nul_in_a_query_parameter_is_a_400_naming_it(model: Model) -> None:
    body = refused(api_client_for(model.team).get("/v1/models?team_id=%00"), 400, "team_id", "U+0000")
    assert body["field"] == "team_id"


def test_a_basic_auth_key_with_a_nul_is_a_401() -> None:
    from rest_framework.test import APIClient

    credentials = base64.b64encode(b"key_\x00abc:secret").decode()
    response = APIClient().get("/v1/models", HTTP_AUTHORIZATION=f"Basic {credentials}")
    refused(response, 401, "malformed API key")


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        (
            "/v1/tools/train",
            {
                "action": "update_image",
                "model_id": "{m}",
                "training_image_id": "{i}",
                "image_data": {"description": "a\u0000b"},
            },
            "image_data.description",
        ),
        (
            "/v1/tools/train",
            {
                "action": "set_pairs",
                "model_id": "{m}",
                "image_data": {"pairs": [{"source_id": "{i}", "target_id": "{j}", "instruction": "x\u0000"}]},
            },
            "instruction",
        ),
        ("/v1/models/{m}", {"parameters": {"sample_prompts": ["a\u0000"]}}, "parameters.sample_prompts[0]"),
        ("/v1/models/{m}", {"parameters": {"preprocessing_captioning_prompt": "\u0000"}}, "preprocessing_captioning"),
        ("/v1/tools/train", {"action": "configure", "model_id": "{m}", "config": {"seed\u0000": 1}}, "config"),
    ],
)
def test_a_nul_anywhere_in_a_json_body_is_a_400_naming_where(model: Model, path: str, body: dict, where: str) -> None:
    images = [image.public_id for image in model.training_images.select_related("asset")[:2]]
    text = json.dumps(body).replace("{m}", model.public_id).replace("{i}", images[0]).replace("{j}", images[1])
    before, parameters = counts(), dict(model.parameters)
    client = api_client_for(model.team)
    method = client.post if path.endswith("train") else client.patch
    response = method(path.replace("{m}", model.public_id), text, content_type="application/json")
    refused(response, 400, where, "U+0000")
    assert counts() == before
    model.refresh_from_db()
    assert model.parameters == parameters


# 500s: paths


def test_home_directory_paths_are_refused_everywhere(model: Model, settings, tmp_path: Path) -> None:
    settings.TRAINING_IMPORT_ROOTS = [tmp_path / "imports"]
    client = api_client_for(model.team)
    before = counts()
    tool = {"action": "upload_images", "model_id": model.public_id, "images": ["~nosuchuser/a.png"]}
    refused(client.post("/v1/tools/train", tool, format="json"), 400, "home-directory paths (~)")
    seed = {"trigger_word": "x", "source_images": ["~nosuchuser/a.png"]}
    refused(client.post("/api/v1/training/", seed, format="json"), 422, "home-directory paths (~)")  # seed 003's shape
    dry_run = {"parameters": {"base_model_path": "~nosuchuser/model"}}
    refused(client.put(f"/v1/models/{model.public_id}/train?dryRun=true", dry_run, format="json"), 400, "(~)")
    create = {"name": "n", "parameters": {"base_model_path": "~nosuchuser/model"}}
    refused(client.post("/v1/models", create, format="json"), 400, "home-directory paths (~)")
    assert counts() == before


def test_a_nul_in_a_server_path_is_refused_by_the_service_too(model: Model) -> None:
    from models_app.errors import InvalidInput
    from models_app.services.image_sources import source_from_reference

    with pytest.raises(InvalidInput, match="control character"):
        source_from_reference(team=model.team, value="shots/a\x00.png", field="images[0]")


# 500s: lengths


def test_an_over_long_webhook_url_is_refused_by_start_create_and_patch(model: Model) -> None:
    client = api_client_for(model.team)
    long_url = "https://example.com/" + "a" * 2000
    before = counts()
    body = {"parameters": {"webhook_url": long_url}}
    refused(client.put(f"/v1/models/{model.public_id}/train", body, format="json"), 400, "at most 2000 characters")
    refused(client.patch(f"/v1/models/{model.public_id}", body, format="json"), 400, "at most 2000 characters")
    seed = {"trigger_word": "x", "entity_id": str(model.uuid), "webhook_url": long_url}
    refused(client.post("/api/v1/training/", seed, format="json"), 422, "webhook_url")
    assert counts() == before
    model.refresh_from_db()
    assert "webhook_url" not in model.parameters


def test_an_over_long_origin_instance_is_a_422(model: Model) -> None:
    body = {"trigger_word": "x", "entity_id": str(model.uuid), "origin_instance": "o" * 101}
    response = api_client_for(model.team).post("/api/v1/training/", body, format="json")
    assert refused(response, 422)["detail"][0]["loc"] == ["body", "origin_instance"]


# 500s: URLs


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("http://example.com:99999/a.png", "Port out of range"),
        ("http://[::1/a.png", "Invalid IPv6 URL"),
        ("http://exa mple.com/a.png", "white space"),
        ("http://:80/a.png", "has no host"),
    ],
)
def test_broken_urls_are_a_400(model: Model, url: str, phrase: str) -> None:
    before = counts()
    response = api_client_for(model.team).post(
        f"/v1/models/{model.public_id}/training-images", {"url": url}, format="json"
    )
    refused(response, 400, phrase)
    assert counts() == before


# 500s: depth, pagination, JWT


@pytest.mark.parametrize(
    ("path", "status"), [("/v1/models", 400), ("/v1/tools/train", 400), ("/api/v1/training/", 422)]
)
def test_json_nested_2000_deep_is_refused(model: Model, path: str, status: int) -> None:
    body = "[" * 2000 + "]" * 2000
    response = api_client_for(model.team).post(path, body, content_type="application/json")
    refused(response, status, "nested deeper than 32 levels")
    nested = '{"name": "x", "parameters": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}"
    response = api_client_for(model.team).post(path, nested, content_type="application/json")
    refused(response, status, "nested deeper than 32 levels")


def test_a_huge_skip_is_a_422(model: Model) -> None:
    response = api_client_for(model.team).get("/api/v1/training/?skip=100000000000000000000")
    assert refused(response, 422)["detail"][0]["loc"] == ["body", "skip"]


def test_a_jwt_whose_user_id_is_not_an_integer_is_a_401() -> None:
    from rest_framework.test import APIClient
    from rest_framework_simplejwt.tokens import AccessToken

    user = UserFactory()
    MembershipFactory(user=user)
    for bad in ("abc", "1.5", [1], True, -3, 2**70):
        token = AccessToken.for_user(user)
        token["user_id"] = bad
        response = APIClient().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {token}")
        refused(response, 401, "not a valid user id")
    token = AccessToken.for_user(user)
    assert APIClient().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


# Accepted, should be refused


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "ftp://example.com/hook",
    ],
)
def test_webhook_urls_at_private_addresses_are_refused_on_create_patch_and_start(model: Model, url: str) -> None:
    client = api_client_for(model.team)
    before = counts()
    parameters = {"parameters": {"webhook_url": url}}
    create = client.post("/v1/models", {"name": "n", **parameters}, format="json")
    refused(create, 400, "webhook_url")
    refused(client.patch(f"/v1/models/{model.public_id}", parameters, format="json"), 400, "webhook_url")
    refused(client.put(f"/v1/models/{model.public_id}/train", parameters, format="json"), 400, "webhook_url")
    seed = {"trigger_word": "x", "entity_id": str(model.uuid), "webhook_url": url}
    assert client.post("/api/v1/training/", seed, format="json").status_code == 422  # seed 003's validation error
    assert counts() == before


def test_a_public_webhook_url_is_accepted_and_a_private_one_is_refused_again_at_delivery(model: Model) -> None:
    from training.webhooks import deliver

    client = api_client_for(model.team)
    response = client.patch(
        f"/v1/models/{model.public_id}", {"parameters": {"webhook_url": "https://93.184.215.14/hook"}}, format="json"
    )
    assert response.status_code == 200, response.content
    task = training_start(model=model)
    # A URL stored before these rules (or a name that resolves elsewhere now) meets them again at delivery.
    TrainingTask.objects.filter(pk=task.pk).update(webhook_url="http://127.0.0.1:9/hook")
    delivery = WebhookDelivery.objects.create(
        team=model.team, task=task, event="queued", url="http://127.0.0.1:9/hook", payload={}
    )
    delivery = deliver(delivery.pk)
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert delivery.attempts == 1 and delivery.response_status is None
    assert "private, loopback or link-local" in delivery.last_error


@pytest.mark.parametrize("path", ["../../etc", "/etc", "/", "./../x", "models/../../etc"])
def test_base_model_paths_outside_the_roots_are_refused_when_stored(path: str, tiny_sd15: Path) -> None:
    model = ModelFactory()
    client = api_client_for(model.team)
    before = counts()
    create = client.post("/v1/models", {"name": "n", "parameters": {"base_model_path": path}}, format="json")
    refused(create, 400, "base_model_path")
    refused(
        client.patch(f"/v1/models/{model.public_id}", {"parameters": {"base_model_path": path}}, format="json"), 400
    )
    assert counts() == before
    inside = client.patch(
        f"/v1/models/{model.public_id}", {"parameters": {"base_model_path": str(tiny_sd15)}}, format="json"
    )
    assert inside.status_code == 200, inside.content


def test_text_is_bounded(model: Model) -> None:
    client = api_client_for(model.team)
    image = model.training_images.select_related("asset").first()
    before = counts()
    create = client.post("/v1/models", {"name": "n", "shortDescription": "d" * 5_000_001}, format="json")
    refused(create, 400, "short_description", "5000 characters")
    caption = {"description": "c" * 2_000_001}
    url = f"/v1/models/{model.public_id}/training-images/{image.public_id}"
    refused(client.put(url, caption, format="json"), 400, "description", "2000 characters")
    assert counts() == before
    image.refresh_from_db()
    assert len(image.description) < 2000


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/models", {"name": "x", "shortDescription": 5}, "short_description"),
        ("/v1/models", {"name": 5}, "name"),
        ("/v1/models", {"name": True}, "name"),
        ("/v1/models/{m}/training-images/{i}", {"description": 5}, "description"),
        ("/v1/models/{m}/training-images/pairs", {"pairs": [{"source_id": 1, "target_id": "x"}]}, "source_id"),
        ("/api/v1/training/", {"trigger_word": 5}, "trigger_word"),
        ("/api/v1/training/", {"trigger_word": "x", "bypass_guidance_embedding": "yes"}, "bypass_guidance"),
        ("/api/v1/training/", {"trigger_word": "x", "rank": "16"}, "rank"),
        ("/api/v1/training/", {"trigger_word": "x", "learning_rate": True}, "learning_rate"),
        ("/v1/images/generation", {"modelID": "{m}", "prompt": "p", "steps": "25"}, "steps"),
        ("/v1/images/generation", {"modelID": "{m}", "prompt": "p", "seed": 1.5}, "seed"),
    ],
)
def test_numbers_are_never_turned_into_text(model: Model, path: str, body: dict, field: str) -> None:
    image = model.training_images.select_related("asset").first().public_id
    path = path.replace("{m}", model.public_id).replace("{i}", image)
    client = api_client_for(model.team)
    before = counts()
    method = client.put if "training-images/" in path else client.post
    response = method(path, body, format="json")
    assert response.status_code in (400, 422), response.content
    assert field in json.dumps(response.json())
    assert counts() == before


def test_the_same_pair_twice_is_refused(model: Model) -> None:
    source, target = (image.public_id for image in model.training_images.select_related("asset")[:2])
    pair = {"source_id": source, "target_id": target, "instruction": "x"}
    response = api_client_for(model.team).put(
        f"/v1/models/{model.public_id}/training-images/pairs", {"pairs": [pair, pair]}, format="json"
    )
    refused(response, 400, "pairs[1] repeats pairs[0]")
    assert Pair.objects.count() == 0


def test_a_pair_with_an_unknown_field_is_refused_not_stripped(model: Model) -> None:
    source, target = (image.public_id for image in model.training_images.select_related("asset")[:2])
    pair = {"source_id": source, "target_id": target, "instruction": "x", "evil": "y"}
    response = api_client_for(model.team).put(
        f"/v1/models/{model.public_id}/training-images/pairs", {"pairs": [pair]}, format="json"
    )
    assert response.status_code == 400 and "evil" in json.dumps(response.json())
    assert "unknown field" in json.dumps(response.json())
    assert Pair.objects.count() == 0


# Left behind


def test_replacing_an_image_with_a_too_small_one_leaves_no_asset(model: Model) -> None:
    image = model.training_images.select_related("asset").first()
    client = api_client_for(model.team)
    before = counts()
    small = io.BytesIO(png((16, 16)))
    small.name = "small.png"
    url = f"/v1/models/{model.public_id}/training-images/{image.public_id}"
    refused(client.put(url, {"file": small}, format="multipart"), 400, "16x16 pixels")
    assert counts() == before
    data_url = "data:image/png;base64," + base64.b64encode(png((16, 16))).decode()
    asset = client.post("/v1/assets", {"data": data_url, "name": "s.png"}, format="json").json()["asset"]["id"]
    before = counts()
    tool = {
        "action": "update_image",
        "model_id": model.public_id,
        "training_image_id": image.public_id,
        "image_data": {"asset_id": asset},
    }
    refused(client.post("/v1/tools/train", tool, format="json"), 400, "16x16 pixels")
    assert counts() == before
    assert TrainingImage.objects.get(pk=image.pk).asset_id == image.asset_id


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "code"),
    [
        ("/v1/models", b'{"name": ', "application/json", 400, "parse_error"),
        ("/v1/models", b'{"name": "\xff\xfe"}', "application/json", 400, "parse_error"),
        ("/v1/models?format=AAA", b"{}", "application/json", 404, "not_found"),
        ("/v1/models", b"name=x", "application/xml", 415, "unsupported_media_type"),
        ("/v1/tools/train", b"{", "application/json", 400, "parse_error"),
        ("/api/v1/training/", b"{", "application/json", 422, None),
    ],
)
def test_drf_errors_carry_detail_and_code(model: Model, path, body, content_type, status, code) -> None:
    response = api_client_for(model.team).generic("POST", path, body, content_type=content_type)
    data = refused(response, status)
    if code is None:
        assert data["detail"][0]["type"] == "json_invalid"
    else:
        assert data["code"] == code and isinstance(data["detail"], str)


def test_unmatched_routes_and_wrong_methods_answer_json(model: Model) -> None:
    client = api_client_for(model.team)
    for path in ("/v1/nothing-here", "/api/v1/nothing", "/v1/models/x/y/z/w"):
        data = refused(client.get(path), 404, "no API route matches")
        assert data["code"] == "not_found"
    data = refused(client.delete("/v1/tools/train"), 405, "DELETE")
    assert data["code"] == "method_not_allowed"
    assert client.get("/admin/nothing-here").status_code in (302, 404)


def test_an_oversized_body_is_a_413_in_json(model: Model, settings) -> None:
    client = api_client_for(model.team)
    before = counts()
    # A 70 MB body as announced: refused before a byte of it is read.
    response = client.generic(
        "POST", "/v1/assets", b"x", content_type="application/octet-stream", CONTENT_LENGTH=str(70 * 1024 * 1024)
    )
    assert refused(response, 413, "at most")["code"] == "request_too_large"
    settings.API_MAX_BODY_BYTES = 1000
    response = client.post("/v1/models", {"name": "n", "shortDescription": "d" * 2000}, format="json")
    refused(response, 413, "at most 1000 bytes")
    assert counts() == before


def test_a_seed_003_start_with_an_entity_id_keeps_the_models_parameters(model: Model) -> None:
    model.parameters = {"steps": 1200, "rank": 8, "preprocessing_captioning_strategy": "description"}
    model.save(update_fields=["parameters"])
    client = api_client_for(model.team)
    body = client.post("/api/v1/training/", {"trigger_word": "zxq", "entity_id": str(model.uuid)}, format="json")
    assert body.status_code == 200, body.content
    task = body.json()
    assert (task["steps"], task["rank"], task["preprocessing_captioning_strategy"]) == (1200, 8, "description")
    client.post(f"/api/v1/training/{task['id']}/cancel")
    # What the request names explicitly wins over the stored parameters.
    explicit = {"trigger_word": "zxq", "entity_id": str(model.uuid), "rank": 4}
    task = client.post("/api/v1/training/", explicit, format="json").json()
    assert (task["steps"], task["rank"]) == (1200, 4)


def test_a_refresh_token_whose_user_id_is_not_an_integer_is_a_401() -> None:
    from rest_framework.test import APIClient
    from rest_framework_simplejwt.tokens import RefreshToken

    user = UserFactory()
    token = RefreshToken.for_user(user)
    token["user_id"] = "abc"
    response = APIClient().post("/api/v1/auth/token/refresh", {"refresh": str(token)}, format="json")
    refused(response, 401, "not a valid user id")
    good = APIClient().post("/api/v1/auth/token/refresh", {"refresh": str(RefreshToken.for_user(user))}, format="json")
    assert good.status_code == 200, good.content


def test_an_error_never_quotes_a_huge_value_back(model: Model) -> None:
    client = api_client_for(model.team)
    response = client.post("/v1/models", {"name": "n", "type": "t" * 1_000_000}, format="json")
    body = refused(response, 400, "type")
    assert len(body["detail"]) <= 500 and body["detail"].endswith("…")
    response = client.post("/api/v1/training/", {"trigger_word": "x", "entity_type": "e" * 1_000_000}, format="json")
    assert len(refused(response, 422)["detail"][0]["msg"]) <= 500


def test_a_caption_file_with_a_control_character_is_refused(model: Model, settings, tmp_path: Path) -> None:
    root = tmp_path / "imports"
    root.mkdir()
    settings.TRAINING_IMPORT_ROOTS = [root]
    (root / "a.png").write_bytes(png())
    (root / "a.txt").write_text("a caption \x00 with a NUL")
    before = counts()
    body = {"trigger_word": "zxq", "entity_id": str(model.uuid), "source_images": ["a.png"]}
    response = api_client_for(model.team).post("/api/v1/training/", body, format="json")
    refused(response, 422, "caption file beside a.png", "U+0000")
    assert counts() == before
