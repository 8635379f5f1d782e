"""The `train` tool of seeds 000/001: one action-dispatching entry point over the dataset and training services.

Served by `POST /v1/tools/train`, the `train` management command and the MCP server, so its
arguments, results and errors are the same everywhere. Results are plain dicts; `render_markdown`
gives the same facts as readable text for `response_format=markdown`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models_app import selectors
from models_app.errors import InvalidInput, NotFound
from models_app.input_rules import ID_MAX, arguments_check, shown_id, text_check
from models_app.models import Model, Team, TrainingImage
from models_app.services.datasets import (
    images_per_call_check,
    model_configure,
    pairs_replace,
    training_image_delete,
    training_image_replace,
    training_images_add,
)
from models_app.services.image_sources import source_from_reference
from models_app.services.training import training_cancel, training_quote, training_start
from models_app.text_case import snake_case

ACTIONS = ("upload_images", "update_image", "delete_image", "set_pairs", "configure", "start", "stop")
RESPONSE_FORMATS = ("json", "markdown")
ARGUMENTS = (
    "action",
    "model_id",
    "training_image_id",
    "images",
    "image_data",
    "config",
    "dry_run",
    "team_id",
    "project_id",
    "response_format",
)

# Seed 001's parameter table, for the tool schema that MCP and the docs publish.
PARAMETER_DESCRIPTIONS = {
    "action": "Training action: upload_images, update_image, delete_image, set_pairs, configure, start, or stop.",
    "model_id": "Model ID (required for all training actions).",
    "training_image_id": "Training image ID (for update_image/delete_image).",
    "images": (
        "Asset IDs of pre-uploaded images (for upload_images). Pass the IDs returned by upload_asset, "
        "or existing asset_ids not raw URLs."
    ),
    "image_data": "Metadata for update_image or pair mappings for set_pairs.",
    "config": "Training configuration (for configure).",
    "dry_run": (
        "Estimate cost without running. Sends ?dryRun=true so the server returns the cost estimate without "
        "starting the training job. Only meaningful for action=configure / action=start."
    ),
    "team_id": "Team ID. Required if user belongs to multiple teams.",
    "project_id": "Project ID to scope the operation to.",
    "response_format": "Output format: 'json' for structured data, 'markdown' for human-readable text.",
}


@dataclass(frozen=True)
class ToolCall:
    action: str
    model: Model
    arguments: dict[str, Any]


def run_train_tool(*, arguments: object, resolve_team: Callable[[str | None], Team]) -> dict[str, Any]:
    """Check the arguments (any JSON value a caller sent), run the action, and return its documented result."""
    arguments = arguments_check(arguments, ARGUMENTS)
    action = arguments.get("action")
    if action not in ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}; got {shown_id(action)}", field="action")
    model_id = arguments.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidInput("model_id is required for every action", field="model_id")
    response_format = arguments.get("response_format", "json") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidInput("response_format must be json or markdown", field="response_format")
    dry_run = arguments.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("dry_run must be true or false", field="dry_run")
    for name in ("model_id", "training_image_id", "team_id", "project_id"):
        if arguments.get(name) is not None:
            text_check(arguments[name], field=name, max_length=ID_MAX)
    team_id = arguments.get("team_id")
    team = resolve_team(team_id)
    model = selectors.model_get(team=team, public_id=model_id)
    project_id = arguments.get("project_id")
    if project_id:
        selectors.project_get(team=team, public_id=project_id)
        if model.project is None or model.project.public_id != project_id:
            raise NotFound(f"model {model_id} not found in project {project_id}", field="model_id")
    return HANDLERS[action](ToolCall(action=action, model=model, arguments=arguments))


def _image(call: ToolCall) -> TrainingImage:
    image_id = call.arguments.get("training_image_id")
    if not isinstance(image_id, str) or not image_id:
        raise InvalidInput(f"training_image_id is required for {call.action}", field="training_image_id")
    return selectors.training_image_get(model=call.model, public_id=image_id)


def _image_summary(image: TrainingImage) -> dict[str, Any]:
    return {
        "id": image.asset.public_id,
        "name": image.name,
        "description": image.description,
        "width": image.asset.width,
        "height": image.asset.height,
    }


def upload_images(call: ToolCall) -> dict[str, Any]:
    images = call.arguments.get("images")
    if not isinstance(images, list) or not images:
        raise InvalidInput("images is required for upload_images: a list of asset ids (or image URLs)", field="images")
    images_per_call_check(len(images), field="images")  # the REST API's rule for assetIds
    sources = [
        source_from_reference(team=call.model.team, value=value, field=f"images[{index}]")
        for index, value in enumerate(images)
    ]
    added = training_images_add(model=call.model, sources=sources, field="images")
    return {
        "status": "uploaded",
        "count": len(added),
        "model_id": call.model.public_id,
        "training_image_ids": [image.asset.public_id for image in added],
        "training_images_total": call.model.training_images.count(),
    }


def update_image(call: ToolCall) -> dict[str, Any]:
    image = _image(call)
    data = call.arguments.get("image_data")
    if not isinstance(data, dict) or not data:
        raise InvalidInput('image_data is required for update_image, e.g. {"description": "..."}', field="image_data")
    allowed = {"description", "caption", "image", "url", "asset_id"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidInput(
            f"image_data.{unknown[0]} is unknown; accepted: {', '.join(sorted(allowed))}", field="image_data"
        )
    description = data.get("description", data.get("caption"))
    if description is not None and not isinstance(description, str):
        raise InvalidInput("image_data.description must be a string", field="image_data.description")
    content, name = None, ""
    replacement = data.get("image") or data.get("url") or data.get("asset_id")
    if replacement is not None:
        source = source_from_reference(team=call.model.team, value=replacement, field="image_data.image")
        if source.asset is not None:
            with source.asset.file.open("rb") as handle:
                content = handle.read()
        else:
            content = source.content
        name = source.name
    image = training_image_replace(training_image=image, content=content, name=name, description=description)
    return {"status": "updated", "model_id": call.model.public_id, "training_image": _image_summary(image)}


def delete_image(call: ToolCall) -> dict[str, Any]:
    image = _image(call)
    image_id = image.asset.public_id
    training_image_delete(training_image=image)
    return {
        "status": "deleted",
        "model_id": call.model.public_id,
        "training_image_id": image_id,
        "training_images_total": call.model.training_images.count(),
    }


def set_pairs(call: ToolCall) -> dict[str, Any]:
    data = call.arguments.get("image_data")
    pairs = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(pairs, list):
        raise InvalidInput(
            'image_data is required for set_pairs: {"pairs": [{"source_id", "target_id", "instruction"}]}',
            field="image_data",
        )
    created = pairs_replace(model=call.model, pairs=pairs)
    listed = selectors.pair_list(model=call.model).filter(pk__in=[pair.pk for pair in created])
    return {
        "status": "pairs_set",
        "model_id": call.model.public_id,
        "count": len(created),
        "pairs": [
            {
                "source_id": p.source.asset.public_id,
                "target_id": p.target.asset.public_id,
                "instruction": p.instruction,
                "extra_source_ids": p.extra_source_public_ids,
            }
            for p in listed
        ],
    }


def configure(call: ToolCall) -> dict[str, Any]:
    config = call.arguments.get("config")
    if not isinstance(config, dict) or not config:
        raise InvalidInput('config is required for configure, e.g. {"steps": 1200}', field="config")
    if call.arguments.get("dry_run"):
        return {
            "status": "estimate",
            "model_id": call.model.public_id,
            **training_quote(model=call.model, overrides=config),
        }
    model = model_configure(model=call.model, parameters=config)
    return {"status": "configured", "model_id": model.public_id, "parameters": model.parameters}


def start(call: ToolCall) -> dict[str, Any]:
    if call.arguments.get("dry_run"):
        return {"status": "estimate", "model_id": call.model.public_id, **training_quote(model=call.model)}
    task = training_start(model=call.model)
    return {
        "status": "started",
        "model_id": call.model.public_id,
        "task_id": str(task.pk),
        "model_status": Model.Status.QUEUED,
        "credits_reserved": selectors.training_task_reserved_credits(task),
    }


def stop(call: ToolCall) -> dict[str, Any]:
    task = training_cancel(model=call.model)
    stopped = task.status == task.Status.CANCELLED
    return {
        "status": "stopped" if stopped else "stopping",
        "model_id": call.model.public_id,
        "task_id": str(task.pk),
        "task_status": task.status,
    }


HANDLERS: dict[str, Callable[[ToolCall], dict[str, Any]]] = {
    "upload_images": upload_images,
    "update_image": update_image,
    "delete_image": delete_image,
    "set_pairs": set_pairs,
    "configure": configure,
    "start": start,
    "stop": stop,
}

TITLES = {
    "uploaded": "Images uploaded",
    "updated": "Training image updated",
    "deleted": "Training image deleted",
    "pairs_set": "Pairs set",
    "configured": "Training configured",
    "estimate": "Cost estimate (dry run, nothing changed)",
    "started": "Training started",
    "stopped": "Training stopped",
    "stopping": "Training stopping",
}


def render_markdown(result: dict[str, Any]) -> str:
    """The same facts as the JSON result, as Markdown a person reads."""
    lines = [f"## {TITLES.get(result.get('status', ''), 'Result')}", ""]
    for key, value in result.items():
        if key == "status":
            continue
        label = snake_case(key).replace("_", " ").capitalize()
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            columns = list(value[0])
            lines += ["", f"**{label}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(item.get(c)) for c in columns) + " |" for item in value]
            lines.append("")
        elif isinstance(value, dict):
            lines.append(f"- **{label}**:")
            lines += [f"  - {snake_case(k).replace('_', ' ')}: {_cell(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            lines.append(f"- **{label}**: {', '.join(_cell(v) for v in value) or 'none'}")
        else:
            lines.append(f"- **{label}**: {_cell(value)}")
    return "\n".join(lines).rstrip() + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")
