"""/v1/models: list, create, get, configure, delete; start, dry-run and cancel a training (seeds 002, 004)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from models_app import selectors
from models_app.api.inputs import ListPagination, StrictCharField, StrictSerializer, paginated, snake_keys
from models_app.api.serializers import (
    DetailSerializer,
    ErrorSerializer,
    LimitErrorSerializer,
    ModelEnvelopeSerializer,
    ModelSerializer,
)
from models_app.api.tenancy import TEAM_PARAMETER, request_team
from models_app.api.throttling import StartThrottle, ThrottledWrites
from models_app.input_rules import DESCRIPTION_MAX, ID_MAX, NAME_MAX, TRIGGER_WORD_MAX
from models_app.models import Model
from models_app.services.datasets import model_configure, model_create, model_delete
from models_app.services.training import training_cancel, training_quote, training_start

ERRORS = {400: ErrorSerializer, 401: DetailSerializer, 404: ErrorSerializer}
START_ERRORS = {**ERRORS, 402: ErrorSerializer, 409: ErrorSerializer, 429: LimitErrorSerializer}


def is_dry_run(request: Request) -> bool:
    return request.query_params.get("dryRun", "").lower() in ("1", "true", "yes")


def model_envelope(model: Model, request: Request) -> dict[str, Any]:
    return {"result": ModelSerializer(model, context={"request": request}).data}


class ModelListApi(APIView):
    class ModelListFilter(serializers.Serializer):
        status = serializers.ChoiceField(choices=Model.Status.choices, required=False)
        type = serializers.ChoiceField(choices=Model.Type.choices, required=False)
        project_id = StrictCharField(max_length=ID_MAX, required=False)

    class ModelCreateInput(StrictSerializer):
        name = StrictCharField(max_length=NAME_MAX)
        type = serializers.ChoiceField(choices=Model.Type.choices, default=Model.Type.SUBJECT)
        short_description = StrictCharField(
            max_length=DESCRIPTION_MAX, multiline=True, required=False, allow_blank=True, default=""
        )
        trigger_word = StrictCharField(max_length=TRIGGER_WORD_MAX, required=False, allow_blank=True, default="")
        parameters = serializers.DictField(required=False, default=dict)
        project_id = StrictCharField(max_length=ID_MAX, required=False, allow_null=True, default=None)

    @extend_schema(
        operation_id="list_models",
        parameters=[
            TEAM_PARAMETER,
            OpenApiParameter("status", str, enum=Model.Status.values),
            OpenApiParameter("type", str, enum=Model.Type.values),
            OpenApiParameter("projectId", str),
        ],
        responses={200: paginated("PaginatedModelList", ModelSerializer(many=True)), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        filters = self.ModelListFilter(data=snake_keys(request.query_params))
        filters.is_valid(raise_exception=True)
        team = request_team(request)
        paginator = ListPagination()
        page = paginator.paginate_read(
            lambda offset, limit: selectors.model_page(team=team, offset=offset, limit=limit, **filters.validated_data),
            lambda: selectors.model_list(team=team, **filters.validated_data).order_by(*selectors.MODEL_LIST_ORDER),
            request,
            view=self,
        )
        return paginator.get_paginated_response(ModelSerializer(page, many=True, context={"request": request}).data)

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request=ModelCreateInput,
        responses={201: ModelEnvelopeSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        data = self.ModelCreateInput(data=snake_keys(request.data))
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        team = request_team(request)
        project_id = values.pop("project_id")
        project = selectors.project_get(team=team, public_id=project_id, field="projectId") if project_id else None
        model = model_create(team=team, project=project, **values)
        model = selectors.model_get(team=team, public_id=model.public_id)
        return Response(model_envelope(model, request), status=status.HTTP_201_CREATED)


class ModelDetailApi(APIView):
    class ModelConfigureInput(StrictSerializer):
        name = StrictCharField(max_length=NAME_MAX, required=False)
        short_description = StrictCharField(
            max_length=DESCRIPTION_MAX, multiline=True, required=False, allow_blank=True
        )
        trigger_word = StrictCharField(max_length=TRIGGER_WORD_MAX, required=False, allow_blank=True)
        parameters = serializers.DictField(required=False)

    @extend_schema(parameters=[TEAM_PARAMETER], responses={200: ModelEnvelopeSerializer, **ERRORS})
    def get(self, request: Request, model_id: str) -> Response:
        model = selectors.model_get(team=request_team(request), public_id=model_id)
        return Response(model_envelope(model, request))

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request=ModelConfigureInput,
        responses={200: ModelEnvelopeSerializer, **ERRORS, 409: ErrorSerializer},
        description="Configure the model. PUT replaces `parameters` whole; PATCH merges them into the stored ones.",
    )
    def put(self, request: Request, model_id: str) -> Response:
        return self._configure(request, model_id, replace=True)

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request=ModelConfigureInput,
        responses={200: ModelEnvelopeSerializer, **ERRORS, 409: ErrorSerializer},
    )
    def patch(self, request: Request, model_id: str) -> Response:
        return self._configure(request, model_id, replace=False)

    def _configure(self, request: Request, model_id: str, *, replace: bool) -> Response:
        team = request_team(request)
        model = selectors.model_get(team=team, public_id=model_id)
        data = self.ModelConfigureInput(data=snake_keys(request.data))
        data.is_valid(raise_exception=True)
        model_configure(model=model, replace=replace, **data.validated_data)
        return Response(model_envelope(selectors.model_get(team=team, public_id=model_id), request))

    @extend_schema(parameters=[TEAM_PARAMETER], responses={200: ModelEnvelopeSerializer, **ERRORS})
    def delete(self, request: Request, model_id: str) -> Response:
        team = request_team(request)
        model = model_delete(model=selectors.model_get(team=team, public_id=model_id))
        model = selectors.model_get(team=team, public_id=model_id, include_deleted=True)
        return Response(model_envelope(model, request))


TRAIN_RESPONSE = inline_serializer(
    "TrainingTriggered",
    {
        "result": serializers.CharField(help_text='"Training triggered"'),
        "taskId": serializers.UUIDField(),
        "status": serializers.ChoiceField(choices=Model.Status.choices),
        "modelID": serializers.CharField(),
        "creditsReserved": serializers.CharField(allow_null=True),
    },
)
QUOTE_RESPONSE = inline_serializer(
    "TrainingDryRun",
    {
        "result": inline_serializer(
            "TrainingQuote",
            {
                "dryRun": serializers.BooleanField(),
                "estimate": serializers.DictField(),
                "balance": serializers.CharField(allow_null=True),
                "canStart": serializers.BooleanField(),
                "problems": serializers.ListField(child=serializers.DictField()),
                "parameters": serializers.DictField(),
            },
        )
    },
)


class ModelTrainApi(ThrottledWrites, APIView):
    def throttle_for(self, request: Request) -> type[BaseThrottle] | None:
        return None if is_dry_run(request) else StartThrottle

    class TrainOverridesInput(StrictSerializer):
        parameters = serializers.DictField(required=False, default=dict)

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        responses={200: TRAIN_RESPONSE, **START_ERRORS},
        description="Start training with the model's stored parameters (seed 002).",
    )
    def get(self, request: Request, model_id: str) -> Response:
        return self._start(request, model_id, overrides={})

    @extend_schema(
        parameters=[TEAM_PARAMETER, OpenApiParameter("dryRun", bool, description="Only estimate the cost")],
        request=TrainOverridesInput,
        responses={
            200: PolymorphicProxySerializer(
                component_name="TrainingStartOrDryRun",
                serializers=[TRAIN_RESPONSE, QUOTE_RESPONSE],
                resource_type_field_name=None,
            ),
            **START_ERRORS,
        },
        description="Start training with parameter overrides; with `?dryRun=true`, return the estimate only.",
    )
    def put(self, request: Request, model_id: str) -> Response:
        data = self.TrainOverridesInput(data=snake_keys(request.data))
        data.is_valid(raise_exception=True)
        overrides = data.validated_data["parameters"]
        if is_dry_run(request):
            model = selectors.model_get(team=request_team(request), public_id=model_id)
            return Response({"result": training_quote(model=model, overrides=overrides)})
        return self._start(request, model_id, overrides=overrides)

    def _start(self, request: Request, model_id: str, *, overrides: dict[str, Any]) -> Response:
        team = request_team(request)
        task = training_start(model=selectors.model_get(team=team, public_id=model_id), overrides=overrides)
        model = selectors.model_get(team=team, public_id=model_id)
        return Response(
            {
                "result": "Training triggered",
                "taskId": str(task.pk),
                "status": model.status,
                "modelID": model.public_id,
                "creditsReserved": selectors.training_task_reserved_credits(task),
            }
        )


class ModelTrainActionApi(APIView):
    class TrainActionInput(StrictSerializer):
        action = serializers.ChoiceField(choices=["cancel"])

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request=TrainActionInput,
        responses={
            200: inline_serializer(
                "TrainingActionResult",
                {
                    "result": serializers.CharField(),
                    "taskId": serializers.UUIDField(),
                    "status": serializers.CharField(),
                },
            ),
            **ERRORS,
            409: ErrorSerializer,
        },
        description='`{"action": "cancel"}` stops a queued training at once and a running one at its next step.',
    )
    def post(self, request: Request, model_id: str) -> Response:
        data = self.TrainActionInput(data=snake_keys(request.data))
        data.is_valid(raise_exception=True)
        model = selectors.model_get(team=request_team(request), public_id=model_id)
        task = training_cancel(model=model)
        done = task.status == task.Status.CANCELLED
        return Response(
            {
                "result": "Training canceled" if done else "Training cancel requested",
                "taskId": str(task.pk),
                "status": task.status,
            }
        )
