"""The `train` tool of seeds 000/001 from a shell, through the same code as the API and MCP."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.errors import InvalidInput
from models_app.input_rules import json_document
from models_app.management.cli import application_errors, team_by_id
from models_app.models import Team
from models_app.train_tool import ACTIONS, render_markdown, run_train_tool


def json_argument(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return json_document(value, field=f"--{name}")
    except InvalidInput as exc:
        raise CommandError(exc.message) from exc


class Command(BaseCommand):
    help = "Run an action of the train tool: " + ", ".join(ACTIONS)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument("--model-id", required=True)
        parser.add_argument("--images", nargs="+", help="asset ids (or image URLs) for upload_images")
        parser.add_argument("--training-image-id")
        parser.add_argument("--image-data", help='JSON, e.g. \'{"description": "..."}\' or \'{"pairs": [...]}\'')
        parser.add_argument("--config", help="JSON training configuration, e.g. '{\"steps\": 1200}'")
        parser.add_argument("--dry-run", action="store_true", help="configure/start: only estimate the cost")
        parser.add_argument("--team-id")
        parser.add_argument("--project-id")
        parser.add_argument("--format", choices=("json", "markdown"), default="json")

    def handle(self, *args: Any, **options: Any) -> None:
        arguments: dict[str, Any] = {"action": options["action"], "model_id": options["model_id"]}
        optional = {
            "images": options["images"],
            "training_image_id": options["training_image_id"],
            "image_data": json_argument(options["image_data"], "image-data"),
            "config": json_argument(options["config"], "config"),
            "team_id": options["team_id"],
            "project_id": options["project_id"],
        }
        arguments.update({key: value for key, value in optional.items() if value is not None})
        if options["dry_run"]:
            arguments["dry_run"] = True
        arguments["response_format"] = options["format"]

        def resolve(team_id: str | None) -> Team:
            # From a shell, the model names its team; --team-id only narrows it.
            if team_id:
                return team_by_id(team_id)
            from models_app.models import Model

            model = Model.objects.select_related("team").filter(public_id=options["model_id"]).first()
            if model is None:
                raise CommandError(f"model {options['model_id']} not found")
            return model.team

        with application_errors():
            result = run_train_tool(arguments=arguments, resolve_team=resolve)
        if options["format"] == "markdown":
            self.stdout.write(render_markdown(result))
        else:
            self.stdout.write(json.dumps(result, indent=2, default=str))
