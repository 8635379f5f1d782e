"""/v1/assets: upload an image once and reuse it by id; /v1/images/generation and /v1/jobs/{id} (seed 002)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from models_app import selectors
from models_app.api.inputs import (
    DATA_URL_MAX,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
    require_one,
    snake_keys,
)
from models_app.api.serializers import AssetSerializer, DetailSerializer, ErrorSerializer, JobSerializer
from models_app.api.tenancy import TEAM_PARAMETER, request_team
from models_app.api.throttling import GenerationThrottle, ThrottledWrites, UploadThrottle
from models_app.api.v1_training_images import upload_content
from models_app.input_rules import FILE_NAME_MAX, ID_MAX, PROMPT_MAX, URL_MAX
from models_app.services.assets import asset_create
from models_app.services.generation import generation_cancel, generation_create
from models_app.services.image_sources import source_from_data_url, source_from_url

ERRORS = {400: ErrorSerializer, 401: DetailSerializer, 404: ErrorSerializer}
THROTTLED = {429: ErrorSerializer}
ASSET_ENVELOPE = inline_serializer("AssetEnvelope", {"asset": AssetSerializer()})


class AssetListApi(ThrottledWrites, APIView):
    def throttle_for(self, request: Request) -> type[BaseThrottle] | None:
        return UploadThrottle if request.method == "POST" else None

    class AssetUploadInput(StrictSerializer):
        file = serializers.FileField(required=False)
        data = StrictCharField(max_length=DATA_URL_MAX, required=False, help_text="A base64 data URL")  # type: ignore[assignment]  # DRF's metaclass takes fields off the class: Serializer.data stays
        url = StrictCharField(max_length=URL_MAX, required=False)
        name = StrictCharField(max_length=FILE_NAME_MAX, required=False, allow_blank=True, default="")
        project_id = StrictCharField(max_length=ID_MAX, required=False, allow_null=True, default=None)

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request={"multipart/form-data": AssetUploadInput, "application/json": AssetUploadInput},
        responses={201: ASSET_ENVELOPE, **ERRORS, **THROTTLED},
        description="Upload an image once (multipart `file`, a `data` URL, or a `url`) and reuse its id.",
    )
    def post(self, request: Request) -> Response:
        team = request_team(request)
        data = self.AssetUploadInput(data=snake_keys(request.data))
        data.is_valid(raise_exception=True)
        values = data.validated_data
        way = require_one(values, ("file", "data", "url"))
        content: bytes | None  # ImageSource.content is optional; a data URL or a download always has one
        if way == "file":
            content, name = upload_content(values["file"]), values["name"] or values["file"].name
        elif way == "data":
            content, name = (
                source_from_data_url(data=values["data"], name=values["name"], field="data").content,
                (values["name"] or "image"),
            )
        else:
            source = source_from_url(url=values["url"], field="url")
            content, name = source.content, values["name"] or source.name
        project = (
            selectors.project_get(team=team, public_id=values["project_id"], field="projectId")
            if values["project_id"]
            else None
        )
        asset = asset_create(team=team, project=project, content=content or b"", name=name, field=way)
        return Response(
            {"asset": AssetSerializer(asset, context={"request": request}).data}, status=status.HTTP_201_CREATED
        )


class AssetDetailApi(APIView):
    @extend_schema(parameters=[TEAM_PARAMETER], responses={200: ASSET_ENVELOPE, **ERRORS})
    def get(self, request: Request, asset_id: str) -> Response:
        asset = selectors.asset_get(team=request_team(request), public_id=asset_id)
        return Response({"asset": AssetSerializer(asset, context={"request": request}).data})


class GenerationApi(ThrottledWrites, APIView):
    def throttle_for(self, request: Request) -> type[BaseThrottle] | None:
        return GenerationThrottle if request.method == "POST" else None

    class GenerationInput(StrictSerializer):
        model_id = StrictCharField(max_length=ID_MAX, help_text="modelID: a ready model")
        prompt = StrictCharField(max_length=PROMPT_MAX, multiline=True)
        negative_prompt = StrictCharField(
            max_length=PROMPT_MAX, multiline=True, required=False, allow_blank=True, default=""
        )
        width = StrictIntegerField(required=False, allow_null=True, default=None)
        height = StrictIntegerField(required=False, allow_null=True, default=None)
        num_images = StrictIntegerField(required=False, default=1)
        steps = StrictIntegerField(required=False, default=25)
        seed = StrictIntegerField(required=False, default=0)
        guidance_scale = StrictFloatField(required=False, default=7.5)
        image = StrictCharField(
            max_length=ID_MAX, required=False, allow_null=True, default=None, help_text="Edit models: input asset id"
        )

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request=GenerationInput,
        responses={
            200: inline_serializer(
                "GenerationStarted",
                {"result": inline_serializer("GenerationJobRef", {"jobId": serializers.CharField()})},
            ),
            **ERRORS,
            409: ErrorSerializer,
            **THROTTLED,
        },
        description="Queue a generation with a ready model (`modelID`); poll `GET /v1/jobs/{jobId}` for the images.",
    )
    def post(self, request: Request) -> Response:
        team = request_team(request)
        data = self.GenerationInput(data=snake_keys(request.data))
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        model = selectors.model_get(team=team, public_id=values.pop("model_id"))
        image_id = values.pop("image")
        source = selectors.asset_get(team=team, public_id=image_id) if image_id else None
        job = generation_create(team=team, model=model, source_image=source, **values)
        return Response({"result": {"jobId": job.public_id}})


class JobCancelApi(APIView):
    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request=None,
        responses={200: inline_serializer("JobCancelled", {"result": JobSerializer()}), **ERRORS, 409: ErrorSerializer},
        description="Cancel a generation job: a queued one at once; a running one finishes without publishing images.",
    )
    def post(self, request: Request, job_id: str) -> Response:
        team = request_team(request)
        generation_cancel(job=selectors.generation_job_get(team=team, public_id=job_id))
        job = selectors.generation_job_get(team=team, public_id=job_id)
        return Response({"result": JobSerializer(job, context={"request": request}).data})


class JobDetailApi(APIView):
    @extend_schema(
        parameters=[TEAM_PARAMETER],
        responses={200: inline_serializer("JobEnvelope", {"result": JobSerializer()}), **ERRORS},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.generation_job_get(team=request_team(request), public_id=job_id)
        return Response({"result": JobSerializer(job, context={"request": request}).data})
