"""The MCP server: seeds 000/001's `train` tool and its companions, over stdio or streamable HTTP.

Every tool is a thin caller of the same services as the REST API. Calls are authenticated with a
team API key: fixed for the process over stdio, a bearer token per request over HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from pydantic import Field

from models_app import selectors
from models_app.api.serializers import AssetSerializer, JobSerializer, ModelSerializer
from models_app.errors import ApplicationError, InvalidInput, NotFound
from models_app.input_rules import (
    ID_MAX,
    NAME_MAX,
    PROMPT_MAX,
    TRIGGER_WORD_MAX,
    arguments_check,
    control_character,
    json_type,
    public_id_plausible,
    shown_id,
)
from models_app.models import Model, Team
from models_app.services.accounts import api_key_authenticate
from models_app.services.assets import asset_create
from models_app.services.datasets import model_create
from models_app.services.generation import generation_create
from models_app.services.image_sources import source_from_reference
from models_app.train_tool import PARAMETER_DESCRIPTIONS, render_markdown, run_train_tool

TRAIN_DESCRIPTION = """Manage the custom model training lifecycle. Actions cover dataset upload, training-image updates, pair mapping, configuration, and start/stop controls.
Args:
- action: required — upload_images, update_image, delete_image, set_pairs, configure, start, or stop
- model_id: required for every action
- images: required for upload_images
- training_image_id, image_data, config: required for the relevant update, pair, or configure actions
- dry_run: optional, only meaningful for action=configure or action=start — true returns a cost estimate without starting the training job (sends ?dryRun=true)
- team_id, project_id: required for OAuth callers
Returns: training-image updates, configuration payloads, or training state changes depending on the action you call. With dry_run=true on configure/start, returns a cost estimate without consuming credits.
Examples:
- "Upload training images" -> action="upload_images", model_id="model_xxx", images=["https://..."]
- "Configure training" -> action="configure", model_id="model_xxx", config={"steps": 1200}
- "Start training" -> action="start", model_id="model_xxx"
- "How much would this training cost?" -> action="start", model_id="model_xxx", dry_run=true
Don't use when: You want to run inference on an existing model. Prefer run_model instead."""

Format = Annotated[Literal["json", "markdown"], Field(description=PARAMETER_DESCRIPTIONS["response_format"])]


def api_key_team(token: str) -> Team | None:
    """The team of a valid API key given as `key.secret` (or `key:secret`, or its base64)."""
    token = token.strip()
    if token.lower().startswith("basic "):
        try:
            token = base64.b64decode(token[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
    separator = "." if "." in token else ":"
    key, _, secret = token.partition(separator)
    if not public_id_plausible(key) or control_character(secret):
        return None
    api_key = api_key_authenticate(key=key, secret=secret)
    return None if api_key is None else api_key.team


def render(result: dict[str, Any], response_format: str) -> str:
    if response_format == "markdown":
        return render_markdown(result)
    return json.dumps(result, indent=2, default=str)


JSON_TYPE_WORDS = {
    "boolean": "true or false",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "array": "a list",
    "object": "an object",
}


def strict_arguments(arguments: Any, schema: dict[str, Any]) -> None:
    """A tool call's arguments as strictly as the REST API takes them: no unknown argument (with the REST
    tool's words), and every value of its schema's JSON type as sent, never coerced ("yes" is not true,
    "5" is not 5). InvalidInput naming the argument otherwise."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    arguments_check(arguments, schema.get("properties", {}))
    error = best_match(Draft202012Validator(schema).iter_errors(arguments))
    if error is None:
        return
    field = ".".join(str(part) for part in error.absolute_path) or "arguments"
    if error.validator == "required":
        raise InvalidInput(f"{error.message}", field=field)
    if error.validator in ("type", "anyOf", "oneOf"):
        options = error.schema.get("anyOf") or error.schema.get("oneOf") or [error.schema]
        types = [
            JSON_TYPE_WORDS.get(option.get("type", ""), option.get("type", ""))
            for option in options
            if option.get("type") not in (None, "null")
        ]
        if types:
            raise InvalidInput(f"{field} must be {' or '.join(types)}, not {json_type(error.instance)}", field=field)
    bound = error.validator_value
    messages = {
        "enum": lambda: f"{field} must be one of {', '.join(map(str, bound))}; got {shown_id(error.instance)}",
        "const": lambda: f"{field} must be {bound!r}",
        "maxLength": lambda: f"{field} must be at most {bound} characters long; got {len(error.instance)}",
        "minLength": lambda: f"{field} must be at least {bound} character(s) long",
        "maximum": lambda: f"{field} must be at most {bound}; got {error.instance}",
        "minimum": lambda: f"{field} must be at least {bound}; got {error.instance}",
        "maxItems": lambda: f"{field} may have at most {bound} entries",
    }
    # Never echo the value itself: it may be megabytes long.
    message = messages.get(str(error.validator), lambda: f"{field} is not valid ({error.validator})")()
    raise InvalidInput(message, field=field)


def build_server(
    current_team: Callable[[], Team], *, http: bool = False, base_url: str = "http://127.0.0.1:8765"
) -> Any:
    """An MCPServer whose tools act for the team `current_team()` returns at each call."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ToolAnnotations

    options: dict[str, Any] = {}
    if http:
        from mcp.server.auth.provider import AccessToken
        from mcp.server.auth.settings import AuthSettings

        class ApiKeyVerifier:
            async def verify_token(self, token: str) -> AccessToken | None:
                team = await sync_to_async(_checked_team)(token)
                if team is None:
                    return None
                return AccessToken(token=token, client_id=team.public_id, scopes=["train"])

        options = {
            "token_verifier": ApiKeyVerifier(),
            "auth": AuthSettings(issuer_url=base_url, resource_server_url=base_url, required_scopes=["train"]),
        }

    class StrictMCPServer(MCPServer):
        """Arguments are checked against the tool's published schema before pydantic sees them, so nothing
        is coerced or dropped."""

        async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
            tool = self._tool_manager.get_tool(name)
            if tool is not None:
                try:
                    strict_arguments(arguments, tool.parameters)
                except ApplicationError as exc:
                    # Worded as the SDK words an error raised by the tool itself.
                    raise ToolError(f"Error executing tool {name}: {exc.status_code} {exc.message}") from exc
            return await super().call_tool(name, arguments, context)

    server = StrictMCPServer(
        name="image-training-platform",
        instructions="Train custom image models: upload assets, add them to a model, configure, start, follow, generate.",
        **options,
    )

    async def call(function: Callable[[Team], dict[str, Any]], response_format: str) -> str:
        def work() -> str:
            close_old_connections()
            try:
                return render(function(current_team()), response_format)
            except ApplicationError as exc:
                raise ToolError(f"{exc.status_code} {exc.message}") from exc

        return await sync_to_async(work, thread_sensitive=True)()

    @server.tool(
        name="train",
        title="Train Models",
        description=TRAIN_DESCRIPTION,
        annotations=ToolAnnotations(title="Train Models", openWorldHint=True, destructiveHint=True),
    )
    async def train(
        action: Annotated[
            Literal["upload_images", "update_image", "delete_image", "set_pairs", "configure", "start", "stop"],
            Field(description=PARAMETER_DESCRIPTIONS["action"]),
        ],
        model_id: Annotated[str, Field(description=PARAMETER_DESCRIPTIONS["model_id"], max_length=ID_MAX)],
        training_image_id: Annotated[str | None, Field(description=PARAMETER_DESCRIPTIONS["training_image_id"])] = None,
        images: Annotated[list[str] | None, Field(description=PARAMETER_DESCRIPTIONS["images"])] = None,
        image_data: Annotated[dict[str, Any] | None, Field(description=PARAMETER_DESCRIPTIONS["image_data"])] = None,
        config: Annotated[Any, Field(description=PARAMETER_DESCRIPTIONS["config"])] = None,
        dry_run: Annotated[bool | None, Field(description=PARAMETER_DESCRIPTIONS["dry_run"])] = None,
        team_id: Annotated[str | None, Field(description=PARAMETER_DESCRIPTIONS["team_id"])] = None,
        project_id: Annotated[str | None, Field(description=PARAMETER_DESCRIPTIONS["project_id"])] = None,
        response_format: Format = "json",
    ) -> str:
        given = {
            "training_image_id": training_image_id,
            "images": images,
            "image_data": image_data,
            "config": config,
            "dry_run": dry_run,
            "team_id": team_id,
            "project_id": project_id,
        }
        arguments = {"action": action, "model_id": model_id, **{k: v for k, v in given.items() if v is not None}}

        def run(team: Team) -> dict[str, Any]:
            def resolve(named: str | None) -> Team:
                if named and named != team.public_id:
                    raise NotFound(f"team {named} not found", field="team_id")
                return team

            return run_train_tool(arguments=arguments, resolve_team=resolve)

        return await call(run, response_format)

    @server.tool(
        name="upload_asset", description="Upload an image once (an http(s) URL or a data URL) and get its asset id."
    )
    async def upload_asset(
        image: Annotated[str, Field(description="An http(s) URL or a base64 data URL of the image")],
        name: Annotated[str | None, Field(description="A file name to keep with it")] = None,
        response_format: Format = "json",
    ) -> str:
        def run(team: Team) -> dict[str, Any]:
            source = source_from_reference(team=team, value=image, field="image")
            if source.asset is not None:
                return {"asset": AssetSerializer(source.asset).data}
            asset = asset_create(team=team, content=source.content or b"", name=name or source.name, field="image")
            return {"asset": AssetSerializer(asset).data}

        return await call(run, response_format)

    @server.tool(name="model_create", description="Create a model to train (then add 12 to 20 images and start it).")
    async def model_create_tool(
        name: Annotated[str, Field(description="The model's name", max_length=NAME_MAX)],
        type: Annotated[  # noqa: A002 - the API's field name
            Literal["subject", "product", "style", "person", "edit"], Field(description="What the model learns")
        ] = "subject",
        trigger_word: Annotated[
            str, Field(description="The word that calls up the subject in prompts", max_length=TRIGGER_WORD_MAX)
        ] = "",
        parameters: Annotated[
            dict[str, Any] | None, Field(description="Training parameters overriding the defaults")
        ] = None,
        project_id: Annotated[str | None, Field(description="Project to put it in")] = None,
        response_format: Format = "json",
    ) -> str:
        def run(team: Team) -> dict[str, Any]:
            project = selectors.project_get(team=team, public_id=project_id) if project_id else None
            model = model_create(
                team=team, name=name, type=type, trigger_word=trigger_word, parameters=parameters, project=project
            )
            return {"model": ModelSerializer(selectors.model_get(team=team, public_id=model.public_id)).data}

        return await call(run, response_format)

    @server.tool(name="model_get", description="A model's status, training progress and weights.")
    async def model_get(model_id: Annotated[str, Field(max_length=ID_MAX)], response_format: Format = "json") -> str:
        return await call(
            lambda team: {"model": ModelSerializer(selectors.model_get(team=team, public_id=model_id)).data},
            response_format,
        )

    @server.tool(name="models_list", description="The team's models, newest first.")
    async def models_list(
        status: Annotated[str | None, Field(description="Only models in this status")] = None,
        project_id: str | None = None,
        limit: Annotated[int, Field(ge=1, le=100)] = 20,
        response_format: Format = "json",
    ) -> str:
        def run(team: Team) -> dict[str, Any]:
            if status and status not in Model.Status.values:
                raise ApplicationError(f"status must be one of {', '.join(Model.Status.values)}", field="status")
            models = selectors.model_list(team=team, status=status, project_id=project_id).order_by(
                *selectors.MODEL_LIST_ORDER
            )
            rows = [
                {k: row[k] for k in ("id", "name", "type", "status", "trainingImagesNumber")}
                for row in ModelSerializer(models[:limit], many=True).data
            ]
            return {"count": len(rows), "models": rows}

        return await call(run, response_format)

    @server.tool(
        name="run_model",
        description="Generate images with a ready model; returns a job id to follow with job_status.",
        annotations=ToolAnnotations(openWorldHint=True),
    )
    async def run_model(
        model_id: Annotated[str, Field(max_length=ID_MAX)],
        prompt: Annotated[str, Field(max_length=PROMPT_MAX)],
        width: int | None = None,
        height: int | None = None,
        num_images: Annotated[int, Field(ge=1, le=4)] = 1,
        steps: Annotated[int, Field(ge=1, le=100)] = 25,
        seed: int = 0,
        image: Annotated[str | None, Field(description="Edit models: the input image's asset id")] = None,
        response_format: Format = "json",
    ) -> str:
        def run(team: Team) -> dict[str, Any]:
            model = selectors.model_get(team=team, public_id=model_id)
            source = selectors.asset_get(team=team, public_id=image) if image else None
            job = generation_create(
                team=team,
                model=model,
                prompt=prompt,
                width=width,
                height=height,
                num_images=num_images,
                steps=steps,
                seed=seed,
                source_image=source,
            )
            return {"status": "queued", "job_id": job.public_id}

        return await call(run, response_format)

    @server.tool(name="job_status", description="A generation job's status and, once done, its image URLs.")
    async def job_status(job_id: Annotated[str, Field(max_length=ID_MAX)], response_format: Format = "json") -> str:
        return await call(
            lambda team: {"job": JobSerializer(selectors.generation_job_get(team=team, public_id=job_id)).data},
            response_format,
        )

    # The published schemas say what call_tool enforces: no argument beyond a tool's own.
    for tool in server._tool_manager.list_tools():
        tool.parameters["additionalProperties"] = False
    return server


def _checked_team(token: str) -> Team | None:
    close_old_connections()
    return api_key_team(token)
