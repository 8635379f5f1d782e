"""The MCP server, driven over stdio by the `mcp` SDK's own client, as an assistant would use it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from models_app.models import Model, TrainingTask
from tests.factories import ModelFactory, add_images, api_token
from tests.helpers import png, worker_environment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SEED_001_PARAMETERS = {
    "action", "model_id", "training_image_id", "images", "image_data", "config", "dry_run", "team_id", "project_id",
    "response_format",
}  # fmt: skip


def test_an_assistant_trains_a_model_through_the_mcp_server(tiny_sd15: Path, settings, tmp_path: Path) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    model = ModelFactory()
    add_images(model, 11)
    image_path = tmp_path / "extra.png"
    image_path.write_bytes(png(colour="navy"))
    import base64

    data_url = "data:image/png;base64," + base64.b64encode(image_path.read_bytes()).decode()
    server = StdioServerParameters(
        command=sys.executable,
        args=[str(Path(django_settings.BASE_DIR) / "manage.py"), "mcp_server"],
        env=worker_environment(settings, MCP_API_KEY=api_token(model.team)),
    )

    async def session() -> dict:
        seen: dict = {}
        async with Client(server) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            seen["tools"] = sorted(tools)
            seen["train_schema"] = tools["train"].input_schema
            seen["closed"] = {name: tool.input_schema.get("additionalProperties") for name, tool in tools.items()}
            seen["open_world"] = tools["train"].annotations.open_world_hint

            async def call(name: str, arguments: dict) -> tuple[bool, str]:
                result = await client.call_tool(name, arguments)
                return bool(result.is_error), result.content[0].text

            async def ok(name: str, arguments: dict) -> str:
                is_error, text = await call(name, arguments)
                assert not is_error, text
                return text

            seen["asset"] = json.loads(await ok("upload_asset", {"image": data_url, "name": "extra.png"}))["asset"]
            upload = {"action": "upload_images", "model_id": model.public_id, "images": [seen["asset"]["id"]]}
            seen["upload"] = json.loads(await ok("train", upload))
            configure = {"action": "configure", "model_id": model.public_id, "config": {"steps": 30, "resolution": 64}}
            seen["configure"] = json.loads(await ok("train", configure))
            dry_run = {"action": "start", "model_id": model.public_id, "dry_run": True, "response_format": "markdown"}
            seen["dry_run"] = await ok("train", dry_run)
            seen["start"] = json.loads(await ok("train", {"action": "start", "model_id": model.public_id}))
            seen["model"] = json.loads(await ok("model_get", {"model_id": model.public_id}))["model"]
            seen["stop"] = json.loads(await ok("train", {"action": "stop", "model_id": model.public_id}))
            seen["bad"] = await call("train", {"action": "start", "model_id": "model_nope"})
            seen["bad_action"] = await call("train", {"action": "dance", "model_id": model.public_id})
            seen["list"] = json.loads(await ok("models_list", {}))
        return seen

    seen = asyncio.run(asyncio.wait_for(session(), timeout=120))

    assert {"train", "upload_asset", "model_create", "model_get", "models_list", "run_model", "job_status"} <= set(
        seen["tools"]
    )
    schema = seen["train_schema"]
    # Every published schema says what the server enforces: no argument beyond the tool's own.
    assert set(seen["closed"].values()) == {False}
    assert set(schema["properties"]) == SEED_001_PARAMETERS
    assert sorted(schema["required"]) == ["action", "model_id"]
    assert schema["properties"]["action"]["enum"] == [
        "upload_images", "update_image", "delete_image", "set_pairs", "configure", "start", "stop",
    ]  # fmt: skip
    assert schema["properties"]["dry_run"]["description"].startswith("Estimate cost without running.")
    assert seen["open_world"] is True

    assert seen["upload"]["status"] == "uploaded" and seen["upload"]["count"] == 1
    assert seen["configure"]["parameters"] == {"steps": 30, "resolution": 64}
    assert seen["dry_run"].startswith("## Cost estimate (dry run, nothing changed)")
    assert seen["start"]["status"] == "started"
    assert seen["model"]["status"] == "queued" and seen["model"]["trainingImagesNumber"] == 12
    assert seen["stop"]["status"] == "stopped"
    is_error, message = seen["bad"]
    assert is_error and "404 model model_nope not found" in message
    assert seen["bad_action"][0] is True
    assert seen["list"]["count"] == 1
    assert Model.objects.get(pk=model.pk).status == Model.Status.CANCELED
    assert TrainingTask.objects.get(model=model).status == TrainingTask.Status.CANCELLED


def test_the_stdio_server_refuses_to_start_without_a_valid_key() -> None:
    import io

    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="a valid API key is needed"):
        call_command("mcp_server", "--api-key", "key_nope.nope", stdout=io.StringIO())


def test_the_http_transport_needs_a_key_and_serves_the_tools(tiny_sd15: Path, settings) -> None:
    import socket
    import subprocess

    import httpx
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from tests.helpers import wait_for

    model = ModelFactory()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(django_settings.BASE_DIR) / "manage.py"),
            "mcp_server",
            "--transport",
            "http",
            "--port",
            str(port),
        ],
        env=worker_environment(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        wait_for(lambda: _answers(url), timeout=30, what="the MCP HTTP server")
        assert httpx.post(url, json={}, headers={"Authorization": "Bearer key_nope.nope"}).status_code == 401

        headers = {"Authorization": f"Bearer {api_token(model.team)}"}

        async def listing() -> list[str]:
            async with (
                httpx.AsyncClient(headers=headers) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                result = await client.call_tool("model_get", {"model_id": model.public_id})
                assert not result.is_error, result.content[0].text
                return [tool.name for tool in (await client.list_tools()).tools]

        assert "train" in asyncio.run(asyncio.wait_for(listing(), timeout=60))
    finally:
        process.terminate()
        process.wait(timeout=20)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.post(url, json={}).status_code == 401
    except httpx.HTTPError:
        return False
