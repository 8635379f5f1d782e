"""/api/v1/training/: seed 003's training-task resource, with its field names, defaults and error shape."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from contract.parameters import default
from models_app import selectors
from models_app.api.inputs import (
    DATA_URL_MAX,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
)
from models_app.api.serializers import DetailSerializer, HTTPValidationErrorSerializer, TrainingTaskSerializer
from models_app.api.tenancy import TEAM_PARAMETER, request_team
from models_app.api.throttling import StartThrottle, ThrottledWrites
from models_app.input_rules import LIST_MAX, ORIGIN_MAX, PATH_MAX, PROMPT_MAX, TRIGGER_WORD_MAX, URL_MAX
from models_app.models import TrainingTask
from models_app.services.training import training_task_cancel
from models_app.services.training_tasks import training_task_create

SKIP_MAX = 1_000_000_000
ERRORS = {401: DetailSerializer, 404: DetailSerializer, 422: HTTPValidationErrorSerializer}


class TrainingTaskCreateSerializer(StrictSerializer):
    """Seed 003's `TrainingTaskCreate`. A field it does not know is refused (a misspelt `learning_rat` would
    otherwise train on the default without a word), as a FastAPI model with `extra="forbid"` refuses it: a 422
    located at that field.

    The defaults shown here (and in the OpenAPI schema) are the parameter table's
    (contract/parameters.py), but only the fields a request names are handed on: with an
    `entity_id`, the model's stored parameters fill what the request leaves out, then the table's
    defaults (see `explicit_fields`)."""

    training_type = serializers.ChoiceField(choices=TrainingTask.TrainingType.choices, default=default("training_type"))
    entity_type = serializers.ChoiceField(choices=TrainingTask.EntityType.choices, default="PRODUCT")
    entity_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    trigger_word = StrictCharField(max_length=TRIGGER_WORD_MAX)
    rank = StrictIntegerField(required=False, allow_null=True, default=default("rank"))
    steps = StrictIntegerField(required=False, allow_null=True, default=default("steps"))
    learning_rate = StrictFloatField(required=False, allow_null=True, default=default("learning_rate"))
    sample_prompts = serializers.ListField(
        child=StrictCharField(max_length=PROMPT_MAX, multiline=True),
        max_length=LIST_MAX,
        required=False,
        allow_null=True,
        default=list,
    )
    source_images = serializers.ListField(
        child=StrictCharField(max_length=DATA_URL_MAX),
        max_length=LIST_MAX,
        required=False,
        allow_null=True,
        default=list,
    )
    base_model_path = StrictCharField(max_length=PATH_MAX, required=False, allow_null=True, default=None)
    bypass_guidance_embedding = StrictBooleanField(
        required=False, allow_null=True, default=default("bypass_guidance_embedding")
    )
    webhook_url = StrictCharField(max_length=URL_MAX, required=False, allow_null=True, allow_blank=True, default=None)
    origin_instance = StrictCharField(max_length=ORIGIN_MAX, required=False, allow_null=True, default="unknown")
    origin_zone = StrictCharField(max_length=ORIGIN_MAX, required=False, allow_null=True, default=None)
    origin_version = StrictCharField(max_length=ORIGIN_MAX, required=False, allow_null=True, default=None)
    origin_tenant_id = StrictCharField(max_length=ORIGIN_MAX, required=False, allow_null=True, default=None)
    preprocessing_transforms = serializers.ListField(
        child=serializers.DictField(), max_length=LIST_MAX, required=False, allow_null=True, default=None
    )
    preprocessing_captioning_strategy = serializers.ChoiceField(
        choices=TrainingTask.CaptioningStrategy.choices,
        required=False,
        allow_null=True,
        default=default("preprocessing_captioning_strategy"),
    )
    preprocessing_captioning_prompt = StrictCharField(
        max_length=PROMPT_MAX, multiline=True, required=False, allow_null=True, default=None
    )

    def explicit_fields(self) -> dict[str, Any]:
        """The validated values of the fields the request itself gave (defaults left out)."""
        given = self.initial_data if isinstance(self.initial_data, dict) else {}
        return {name: value for name, value in self.validated_data.items() if name in given}


class SeedErrorsMixin:
    # Request validation errors answer seed 003's HTTPValidationError (422), not /v1's shape.
    error_style = "fastapi"


class TrainingTaskListApi(SeedErrorsMixin, ThrottledWrites, APIView):
    def throttle_for(self, request: Request) -> type[BaseThrottle] | None:
        return StartThrottle if request.method == "POST" else None

    class TrainingTaskPage(serializers.Serializer):
        limit = serializers.IntegerField(min_value=1, max_value=1000, default=10)
        # Bounded so that an offset never overflows the database's integers.
        skip = serializers.IntegerField(min_value=0, max_value=SKIP_MAX, default=0)

    @extend_schema(
        operation_id="create_training_task",
        parameters=[TEAM_PARAMETER],
        request=TrainingTaskCreateSerializer,
        responses={
            200: TrainingTaskSerializer,
            400: DetailSerializer,
            402: DetailSerializer,
            409: DetailSerializer,
            429: DetailSerializer,
            **ERRORS,
        },
        description="Create and start a new training task.",
    )
    def post(self, request: Request) -> Response:
        data = TrainingTaskCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = training_task_create(team=request_team(request), data=data.explicit_fields())
        task = selectors.training_task_get(team=task.team, task_id=str(task.pk))
        return Response(TrainingTaskSerializer(task).data)

    @extend_schema(
        operation_id="list_training_tasks",
        parameters=[
            TEAM_PARAMETER,
            OpenApiParameter("limit", int, default=10, description="1 to 1000"),
            OpenApiParameter("skip", int, default=0, description=f"0 to {SKIP_MAX}"),
        ],
        responses={200: TrainingTaskSerializer(many=True), **ERRORS},
        description="List all training tasks with pagination.",
    )
    def get(self, request: Request) -> Response:
        page = self.TrainingTaskPage(data=request.query_params)
        if not page.is_valid():
            raise serializers.ValidationError(page.errors)
        limit, skip = page.validated_data["limit"], page.validated_data["skip"]
        tasks = selectors.training_task_list(team=request_team(request))[skip : skip + limit]
        return Response(TrainingTaskSerializer(tasks, many=True).data)


class TrainingTaskDetailApi(SeedErrorsMixin, APIView):
    @extend_schema(
        operation_id="get_training_status",
        parameters=[TEAM_PARAMETER],
        responses={200: TrainingTaskSerializer, **ERRORS},
        description="Get status of a training task.",
    )
    def get(self, request: Request, task_id: str) -> Response:
        return Response(
            TrainingTaskSerializer(selectors.training_task_get(team=request_team(request), task_id=task_id)).data
        )


class TrainingTaskCancelApi(SeedErrorsMixin, APIView):
    @extend_schema(
        operation_id="cancel_training",
        parameters=[TEAM_PARAMETER],
        request=None,
        responses={200: TrainingTaskSerializer, 409: DetailSerializer, **ERRORS},
        description="Cancel a running training task (a queued one is cancelled at once).",
    )
    def post(self, request: Request, task_id: str) -> Response:
        team = request_team(request)
        training_task_cancel(task=selectors.training_task_get(team=team, task_id=task_id))
        return Response(TrainingTaskSerializer(selectors.training_task_get(team=team, task_id=task_id)).data)
