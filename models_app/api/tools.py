"""POST /v1/tools/train: seeds 000/001's `train` tool over HTTP."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from models_app.api.renderers import MarkdownRenderer
from models_app.api.serializers import DetailSerializer, ErrorSerializer
from models_app.api.tenancy import request_team
from models_app.api.throttling import StartThrottle, ThrottledWrites, UploadThrottle
from models_app.train_tool import ACTIONS, PARAMETER_DESCRIPTIONS, RESPONSE_FORMATS, render_markdown, run_train_tool

TOOL_REQUEST = inline_serializer(
    "TrainToolArguments",
    {
        "action": serializers.ChoiceField(choices=ACTIONS, help_text=PARAMETER_DESCRIPTIONS["action"]),
        "model_id": serializers.CharField(help_text=PARAMETER_DESCRIPTIONS["model_id"]),
        "training_image_id": serializers.CharField(
            required=False, help_text=PARAMETER_DESCRIPTIONS["training_image_id"]
        ),
        "images": serializers.ListField(
            child=serializers.CharField(), required=False, help_text=PARAMETER_DESCRIPTIONS["images"]
        ),
        "image_data": serializers.JSONField(required=False, help_text=PARAMETER_DESCRIPTIONS["image_data"]),
        "config": serializers.JSONField(required=False, help_text=PARAMETER_DESCRIPTIONS["config"]),
        "dry_run": serializers.BooleanField(required=False, help_text=PARAMETER_DESCRIPTIONS["dry_run"]),
        "team_id": serializers.CharField(required=False, help_text=PARAMETER_DESCRIPTIONS["team_id"]),
        "project_id": serializers.CharField(required=False, help_text=PARAMETER_DESCRIPTIONS["project_id"]),
        "response_format": serializers.ChoiceField(
            choices=RESPONSE_FORMATS, default="json", help_text=PARAMETER_DESCRIPTIONS["response_format"]
        ),
    },
)


class TrainToolApi(ThrottledWrites, APIView):
    renderer_classes = [JSONRenderer, MarkdownRenderer]

    def throttle_for(self, request: Request) -> type[BaseThrottle] | None:
        arguments = request.data if isinstance(request.data, dict) else {}
        if arguments.get("action") in ("upload_images", "update_image"):
            return UploadThrottle
        if arguments.get("action") == "start" and arguments.get("dry_run") is not True:
            return StartThrottle
        return None

    @extend_schema(
        operation_id="train_tool",
        request=TOOL_REQUEST,
        responses={
            (200, "application/json"): OpenApiResponse(
                inline_serializer("TrainToolResult", {"status": serializers.CharField()}),
                description='The action\'s result, e.g. {"status": "uploaded", "count": 3}',
            ),
            (200, "text/markdown"): OpenApiResponse(str, description="The same result as Markdown"),
            400: ErrorSerializer,
            401: DetailSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
            429: ErrorSerializer,
        },
        description=(
            "Manage the custom model training lifecycle: upload_images, update_image, delete_image, set_pairs, "
            "configure, start, stop. dry_run with configure/start returns the cost estimate and changes nothing."
        ),
    )
    def post(self, request: Request) -> Response | HttpResponse:
        arguments = request.data
        result = run_train_tool(
            arguments=dict(arguments) if isinstance(arguments, dict) else arguments,
            resolve_team=lambda team_id: request_team(request, team_id=team_id),
        )
        if isinstance(arguments, dict) and arguments.get("response_format") == "markdown":
            return HttpResponse(render_markdown(result), content_type="text/markdown; charset=utf-8")
        return Response(result)
