"""/v1/models/{id}/training-images: list, add, replace, delete, replace pairs (seed 004)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from models_app import selectors
from models_app.api.inputs import (
    DATA_URL_MAX,
    ListPagination,
    StrictCharField,
    StrictSerializer,
    paginated,
    require_one,
    snake_keys,
)
from models_app.api.serializers import (
    DetailSerializer,
    ErrorSerializer,
    PairsReplaceResponseSerializer,
    TrainingImageEnvelopeSerializer,
    TrainingImageSerializer,
    pairs_output,
)
from models_app.api.tenancy import TEAM_PARAMETER, request_team
from models_app.api.throttling import ThrottledWrites, UploadThrottle
from models_app.errors import InvalidInput
from models_app.input_rules import CAPTION_MAX, FILE_NAME_MAX, ID_MAX, INSTRUCTION_MAX, LIST_MAX, URL_MAX
from models_app.services.datasets import (
    images_per_call_check,
    pairs_replace,
    training_image_delete,
    training_image_replace,
    training_images_add,
)
from models_app.services.image_sources import (
    ImageSource,
    source_from_asset_id,
    source_from_data_url,
    source_from_url,
)

ERRORS = {400: ErrorSerializer, 401: DetailSerializer, 404: ErrorSerializer, 409: ErrorSerializer}
UPLOAD_ERRORS = {**ERRORS, 429: ErrorSerializer}


def upload_content(upload: UploadedFile, field: str = "file") -> bytes:
    if upload.size is not None and upload.size > settings.IMAGE_MAX_BYTES:
        raise InvalidInput(
            f"{upload.name!r} is {upload.size} bytes; images may be at most {settings.IMAGE_MAX_BYTES} bytes",
            field=field,
        )
    return upload.read()


class TrainingImageListApi(ThrottledWrites, APIView):
    def throttle_for(self, request: Request) -> type[BaseThrottle] | None:
        return UploadThrottle if request.method == "POST" else None

    class TrainingImageAddInput(StrictSerializer):
        file = serializers.FileField(required=False, help_text="The image, as a multipart upload")
        asset_id = StrictCharField(max_length=ID_MAX, required=False, help_text="An uploaded asset's id (assetId)")
        asset_ids = serializers.ListField(
            child=StrictCharField(max_length=ID_MAX),
            max_length=LIST_MAX,
            required=False,
            help_text="Up to IMAGES_PER_CALL_MAX (20) asset ids (assetIds)",
        )
        data = StrictCharField(max_length=DATA_URL_MAX, required=False, help_text="A base64 data URL (with `name`)")  # type: ignore[assignment]  # DRF's metaclass takes fields off the class: Serializer.data stays
        url = StrictCharField(max_length=URL_MAX, required=False, help_text="An http(s) URL to download the image from")
        name = StrictCharField(max_length=FILE_NAME_MAX, required=False, allow_blank=True, default="")
        description = StrictCharField(
            max_length=CAPTION_MAX, multiline=True, required=False, allow_blank=True, default=""
        )

    @extend_schema(
        operation_id="list_training_images",
        parameters=[TEAM_PARAMETER],
        responses={200: paginated("PaginatedTrainingImageList", TrainingImageSerializer(many=True)), **ERRORS},
    )
    def get(self, request: Request, model_id: str) -> Response:
        model = selectors.model_get(team=request_team(request), public_id=model_id)
        paginator = ListPagination()
        page = paginator.paginate_queryset(selectors.training_image_list(model=model), request, view=self)
        data = TrainingImageSerializer(page, many=True, context={"request": request}).data
        return paginator.get_paginated_response(data)

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request={"multipart/form-data": TrainingImageAddInput, "application/json": TrainingImageAddInput},
        responses={
            201: inline_serializer(
                "TrainingImageAddResponse",
                {
                    "training_image": TrainingImageSerializer(),
                    "training_images": TrainingImageSerializer(many=True, required=False),
                },
            ),
            **UPLOAD_ERRORS,
        },
        description=(
            "Add an image by multipart `file`, `assetId`, `assetIds` (at most 20; the answer also lists them "
            "all in `training_images`), `data` (a data URL) with `name`, or `url`. `description` is its caption."
        ),
    )
    def post(self, request: Request, model_id: str) -> Response:
        team = request_team(request)
        model = selectors.model_get(team=team, public_id=model_id)
        data = self.TrainingImageAddInput(data=snake_keys(request.data))
        data.is_valid(raise_exception=True)
        values = data.validated_data
        way = require_one(values, ("file", "asset_id", "asset_ids", "data", "url"))
        sources: list[ImageSource]
        if way == "file":
            upload = values["file"]
            sources = [ImageSource(name=values["name"] or upload.name, content=upload_content(upload))]
        elif way == "asset_id":
            sources = [source_from_asset_id(team=team, asset_id=values["asset_id"], field="assetId")]
        elif way == "asset_ids":
            ids = values["asset_ids"]
            images_per_call_check(len(ids), field="assetIds")
            if len(set(ids)) != len(ids):
                raise InvalidInput("assetIds names the same asset twice", field="assetIds")
            sources = [
                source_from_asset_id(team=team, asset_id=asset_id, field=f"assetIds[{index}]")
                for index, asset_id in enumerate(ids)
            ]
        elif way == "data":
            sources = [source_from_data_url(data=values["data"], name=values["name"] or "image", field="data")]
        else:
            sources = [source_from_url(url=values["url"], field="url")]
        images = training_images_add(
            model=model, sources=sources, descriptions=[values["description"]] * len(sources), field=way
        )
        output = TrainingImageSerializer(images, many=True, context={"request": request}).data
        body: dict[str, Any] = {"training_image": output[0]}
        if way == "asset_ids":
            body["training_images"] = output
        return Response(body, status=status.HTTP_201_CREATED)


class TrainingImageDetailApi(ThrottledWrites, APIView):
    def throttle_for(self, request: Request) -> type[BaseThrottle] | None:
        return UploadThrottle if request.method == "PUT" else None

    class TrainingImageReplaceInput(StrictSerializer):
        file = serializers.FileField(required=False)
        data = StrictCharField(max_length=DATA_URL_MAX, required=False, help_text="A base64 data URL")  # type: ignore[assignment]  # DRF's metaclass takes fields off the class: Serializer.data stays
        url = StrictCharField(max_length=URL_MAX, required=False)
        name = StrictCharField(max_length=FILE_NAME_MAX, required=False, allow_blank=True, default="")
        description = StrictCharField(max_length=CAPTION_MAX, multiline=True, required=False, allow_blank=True)

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request={"multipart/form-data": TrainingImageReplaceInput, "application/json": TrainingImageReplaceInput},
        responses={200: TrainingImageEnvelopeSerializer, **UPLOAD_ERRORS},
        description="Replace the image (a new file gives it a new id) and/or its description.",
    )
    def put(self, request: Request, model_id: str, image_id: str) -> Response:
        team = request_team(request)
        model = selectors.model_get(team=team, public_id=model_id)
        image = selectors.training_image_get(model=model, public_id=image_id)
        data = self.TrainingImageReplaceInput(data=snake_keys(request.data))
        data.is_valid(raise_exception=True)
        values = data.validated_data
        content: bytes | None = None
        name = values["name"]
        given = [way for way in ("file", "data", "url") if values.get(way)]
        if len(given) > 1:
            raise InvalidInput("send at most one of: file, data, url", field=given[1])
        if given == ["file"]:
            content, name = upload_content(values["file"]), name or values["file"].name
        elif given == ["data"]:
            content = source_from_data_url(data=values["data"], name=name, field="data").content
        elif given == ["url"]:
            source = source_from_url(url=values["url"], field="url")
            content, name = source.content, name or source.name
        image = training_image_replace(
            training_image=image, content=content, name=name, description=values.get("description")
        )
        return Response({"training_image": TrainingImageSerializer(image, context={"request": request}).data})

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        responses={
            200: inline_serializer(
                "TrainingImageDeleted", {"id": serializers.CharField(), "deleted": serializers.BooleanField()}
            ),
            **ERRORS,
        },
    )
    def delete(self, request: Request, model_id: str, image_id: str) -> Response:
        model = selectors.model_get(team=request_team(request), public_id=model_id)
        training_image_delete(training_image=selectors.training_image_get(model=model, public_id=image_id))
        return Response({"id": image_id, "deleted": True})


class PairsApi(APIView):
    class PairInput(StrictSerializer):
        """One before/after pair; an unknown field is refused."""

        source_id = StrictCharField(max_length=ID_MAX)
        target_id = StrictCharField(max_length=ID_MAX)
        instruction = StrictCharField(
            max_length=INSTRUCTION_MAX, multiline=True, required=False, allow_blank=True, allow_null=True, default=""
        )
        extra_source_ids = serializers.ListField(
            child=StrictCharField(max_length=ID_MAX),
            required=False,
            default=list,
            help_text="Beyond seed 004: further source images, after source_id, for the base models that take "
            "several reference images (FLUX.2: up to 3 more)",
        )

        def to_internal_value(self, data: Any) -> Any:
            return super().to_internal_value(snake_keys(data))

    @extend_schema(
        parameters=[TEAM_PARAMETER],
        request=inline_serializer("PairsReplaceRequest", {"pairs": PairInput(many=True)}),
        responses={200: PairsReplaceResponseSerializer, **ERRORS},
        description='Replace all pairs. The body is `{"pairs": [...]}` or the bare list.',
    )
    def put(self, request: Request, model_id: str) -> Response:
        model = selectors.model_get(team=request_team(request), public_id=model_id)
        body = request.data
        if isinstance(body, dict) and set(body) - {"pairs"}:
            unknown = sorted(set(body) - {"pairs"})[0]
            raise InvalidInput(f"{unknown}: unknown field; accepted fields: pairs", field=unknown)
        entries = body.get("pairs") if isinstance(body, dict) else body
        if not isinstance(entries, list):
            raise InvalidInput("send a list of {source_id, target_id, instruction}, bare or as `pairs`", field="pairs")
        data = self.PairInput(data=entries, many=True)
        if not data.is_valid():
            raise serializers.ValidationError({"pairs": data.errors})
        pairs = pairs_replace(model=model, pairs=data.validated_data)
        return Response(pairs_output(list(selectors.pair_list(model=model).filter(pk__in=[p.pk for p in pairs]))))
