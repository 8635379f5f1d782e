"""Output serializers: the exact response shapes of the seed documents, and the schema's source of truth."""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any, ClassVar, cast

from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from models_app.media_access import media_url
from models_app.models import Asset, GenerationJob, Model, Pair, TrainingImage, TrainingTask
from models_app.selectors import TaskProgress, model_progress


def file_url(context: Mapping[str, Any], file: Any) -> str:
    """A stored file's absolute, signed (or presigned) URL: see `models_app.media_access`."""
    return media_url(file, context.get("request"))


def _whole(instance: Any) -> Any:
    return instance


class UtcDateTimeField(serializers.DateTimeField):
    """DRF's DateTimeField, always in UTC ("2022-04-13T15:42:05.901Z", as the seed documents show).

    The API's timestamps never depend on a timezone activated somewhere for a request. Naming the zone
    also spares DRF a look-up of the current timezone for every value: that was a third of the time of
    a page of 50 models' serialization."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("default_timezone", dt.UTC)
        super().__init__(**kwargs)


OutputStep = tuple[str, Callable[[Any], Any], Callable[[Any], Any] | None, str]


class PlannedOutput:
    """DRF's `to_representation`, following a plan made once per serializer class.

    DRF builds each serializer's fields anew (a deep copy of the declared ones) and looks each field's
    source up anew for every row (walking its dotted path, checking whether each step is callable): for
    the 50 rows of a list page that cost as much as the formatting itself, and the copies as much again
    on every request. The plan holds, per readable field, a getter of its value and the bound field that
    formats it, made from one instance of the class; a method field calls the method of the serializer
    at hand, so what it reads of `self.context` is this request's. The result is the same for every
    source and field these serializers use (attributes and dotted attributes, never methods; fields that
    format from their own arguments, never from the context), as tests check against DRF's own loop."""

    _plan: ClassVar[list[OutputStep] | None] = None

    @classmethod
    def _output_plan(cls) -> list[OutputStep]:
        plan = cls.__dict__.get("_plan")
        if plan is None:
            plan = []
            for field in cast(serializers.Serializer, cls())._readable_fields:
                value_of = _whole if field.source == "*" else operator.attrgetter(str(field.source))
                if isinstance(field, serializers.SerializerMethodField):
                    plan.append((field.field_name, value_of, None, field.method_name))
                else:
                    plan.append((field.field_name, value_of, field.to_representation, ""))
            cls._plan = plan  # two threads building it at once build the same plan
        return plan

    def to_representation(self, instance: Any) -> Any:
        output = {}
        for name, value_of, represent, method in self._output_plan():
            value = value_of(instance)
            if represent is None:
                output[name] = getattr(self, method)(value)
            else:
                output[name] = None if value is None else represent(value)
        return output


class TrainingImageSerializer(serializers.Serializer):
    """Seed 004's `TrainingImage`."""

    id = serializers.CharField(source="asset.public_id", help_text='The training image ID ("asset_…")')
    automatic_captioning = serializers.CharField(help_text="Automatic captioning of the image")
    created_at = UtcDateTimeField(help_text="The upload date as an ISO string")
    description = serializers.CharField(help_text="Description (caption) for the image")
    download_url = serializers.SerializerMethodField(help_text="The URL of the image")
    name = serializers.CharField(help_text="The original file name of the image")

    def get_download_url(self, obj: TrainingImage) -> str:
        return file_url(self.context, obj.asset.file)


class TrainingImageEnvelopeSerializer(serializers.Serializer):
    training_image = TrainingImageSerializer()


class PairSerializer(serializers.Serializer):
    """Seed 004's `Pair`."""

    instruction = serializers.CharField(allow_null=True, help_text="The instruction for the pair, source to target")
    source_id = serializers.CharField(source="source.asset.public_id", help_text="The source asset ID")
    target_id = serializers.CharField(source="target.asset.public_id", help_text="The target asset ID")
    # Not read-only, so the schema marks it optional: the serializer only ever writes responses.
    extra_source_ids = serializers.ListField(
        child=serializers.CharField(),
        source="extra_source_public_ids",
        required=False,
        help_text="Beyond seed 004: the pair's further source asset IDs, after source_id; present only on a pair "
        "that has some, so a pair of one source keeps the seed's shape",
    )

    def to_representation(self, instance: Pair) -> dict[str, Any]:
        shown = super().to_representation(instance)
        if not shown["extra_source_ids"]:
            del shown["extra_source_ids"]
        return shown


class PairsReplaceResponseSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Number of training image pairs")
    pairs = PairSerializer(many=True)


class TrainingProgressSerializer(PlannedOutput, serializers.Serializer):
    taskId = serializers.UUIDField(source="pk")  # noqa: N815 - the API's spelling
    status = serializers.ChoiceField(choices=TrainingTask.Status.choices)
    stage = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField(help_text="0 to 1")
    current_step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    eta_seconds = serializers.IntegerField(allow_null=True)
    loss = serializers.FloatField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)
    gpus = serializers.IntegerField(help_text="GPUs the training asked for (parameter `gpus`).")
    machine = serializers.SerializerMethodField(help_text="The worker machine running it; empty unless it runs.")
    devices = serializers.SerializerMethodField(help_text="The GPU indices it holds on that machine while it runs.")

    def running(self, obj: TaskProgress) -> bool:
        return obj.status in TrainingTask.RUNNING_STATUSES

    def get_machine(self, obj: TaskProgress) -> str:
        return obj.machine if self.running(obj) else ""

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_devices(self, obj: TaskProgress) -> list[int]:
        return [int(index) for index in obj.devices] if self.running(obj) else []

    def get_stage(self, obj: TaskProgress) -> str:
        if obj.status == TrainingTask.Status.PREPROCESSING and obj.preprocessing_stage:
            return obj.preprocessing_stage
        return obj.status.lower()

    def get_progress(self, obj: TaskProgress) -> float:
        return round(obj.progress / 100.0, 4)


class ModelSerializer(PlannedOutput, serializers.Serializer):
    """A model as `GET /v1/models/{id}` shows it (seed 002's fields), from a row of selectors.model_list or
    selectors.model_get (what it shows of the model's project and tasks are columns those rows carry)."""

    id = serializers.CharField(source="public_id")
    uuid = serializers.UUIDField()
    name = serializers.CharField()
    shortDescription = serializers.CharField(source="short_description")  # noqa: N815
    type = serializers.ChoiceField(choices=Model.Type.choices)
    status = serializers.ChoiceField(choices=Model.Status.choices)
    trigger_word = serializers.CharField()
    parameters = serializers.DictField()
    trainingImagesNumber = serializers.SerializerMethodField()  # noqa: N815
    trainingProgress = serializers.SerializerMethodField()  # noqa: N815
    weightsUrl = serializers.SerializerMethodField()  # noqa: N815
    teamId = serializers.CharField(source="team.public_id")  # noqa: N815
    projectId = serializers.CharField(source="project_public_id", allow_null=True)  # noqa: N815
    createdAt = UtcDateTimeField(source="created_at")  # noqa: N815
    updatedAt = UtcDateTimeField(source="updated_at")  # noqa: N815

    def get_trainingImagesNumber(self, obj: Model) -> int:  # noqa: N802
        count = getattr(obj, "training_images_count", None)
        return count if count is not None else obj.training_images.count()

    @cached_property
    def _progress(self) -> TrainingProgressSerializer:
        # One nested serializer for all the rows of a page: building one per row (DRF deep-copies its
        # declared fields at each construction) cost more than every other field of the page together.
        return TrainingProgressSerializer()

    @extend_schema_field(TrainingProgressSerializer(allow_null=True))
    def get_trainingProgress(self, obj: Model) -> dict[str, Any] | None:  # noqa: N802
        task = model_progress(obj)
        return self._progress.to_representation(task) if task is not None else None

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_weightsUrl(self, obj: Model) -> str | None:  # noqa: N802
        name = vars(obj)["trained_weights"]  # a column of the selectors' rows
        return file_url(self.context, name) if name else None


class ModelEnvelopeSerializer(serializers.Serializer):
    result = ModelSerializer()


class AssetSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    name = serializers.CharField(source="original_name")
    kind = serializers.ChoiceField(choices=Asset.Kind.choices)
    format = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    download_url = serializers.SerializerMethodField()
    created_at = UtcDateTimeField()

    def get_download_url(self, obj: Asset) -> str:
        return file_url(self.context, obj.file)


class JobImageSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    url = serializers.SerializerMethodField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()

    def get_url(self, obj: Asset) -> str:
        return file_url(self.context, obj.file)


class JobSerializer(serializers.Serializer):
    jobId = serializers.CharField(source="public_id")  # noqa: N815
    modelID = serializers.CharField(source="model.public_id")  # noqa: N815
    status = serializers.ChoiceField(choices=GenerationJob.Status.choices)
    prompt = serializers.CharField()
    width = serializers.IntegerField(allow_null=True)
    height = serializers.IntegerField(allow_null=True)
    numImages = serializers.IntegerField(source="num_images")  # noqa: N815
    steps = serializers.IntegerField()
    seed = serializers.IntegerField()
    images = JobImageSerializer(many=True)
    error = serializers.CharField(source="error_message")
    cancelRequestedAt = UtcDateTimeField(  # noqa: N815
        source="cancel_requested_at",
        allow_null=True,
        help_text="Set once a cancel was asked for: a running job then ends `canceled`, without its images.",
    )
    attempts = serializers.IntegerField(source="attempt_count", help_text="Workers that took the job (retries).")
    createdAt = UtcDateTimeField(source="created_at")  # noqa: N815
    startedAt = UtcDateTimeField(source="started_at", allow_null=True)  # noqa: N815
    completedAt = UtcDateTimeField(source="completed_at", allow_null=True)  # noqa: N815


class TrainingTaskSerializer(PlannedOutput, serializers.ModelSerializer):
    """Seed 003's `TrainingTask`: every documented field, with its documented name."""

    entity_id = serializers.UUIDField(source="model_id", allow_null=True)
    sample_prompts = serializers.ListField(child=serializers.CharField())
    source_images = serializers.ListField(
        child=serializers.CharField(), help_text="Original image paths from source system"
    )
    preprocessing_transforms = serializers.ListField(
        child=serializers.DictField(), allow_null=True, help_text="List of image transformations to apply"
    )

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.DateTimeField: UtcDateTimeField,
    }

    class Meta:
        model = TrainingTask
        fields = [
            "id",
            "created_at",
            "updated_at",
            "origin_instance",
            "origin_zone",
            "origin_version",
            "origin_tenant_id",
            "training_type",
            "entity_type",
            "entity_id",
            "status",
            "progress",
            "current_step",
            "total_steps",
            "eta_seconds",
            "trigger_word",
            "training_folder",
            "rank",
            "save_every",
            "max_step_saves_to_keep",
            "batch_size",
            "steps",
            "learning_rate",
            "gradient_accumulation",
            "optimizer",
            "bypass_guidance_embedding",
            "base_model_path",
            "local_model_path",
            "sample_every",
            "sample_steps",
            "sample_prompts",
            "started_at",
            "completed_at",
            "logs",
            "error_message",
            "webhook_url",
            "celery_training_task_id",
            "celery_preprocessing_task_id",
            "celery_chain_task_id",
            "preprocessing_stage",
            "processed_files_count",
            "total_files_count",
            "preprocessing_started_at",
            "preprocessing_completed_at",
            "source_images",
            "processed_dataset_path",
            "preprocessing_transforms",
            "preprocessing_captioning_strategy",
            "preprocessing_captioning_prompt",
            "priority",
            "priority_changed_at",
        ]
        read_only_fields = fields


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What was wrong, in words a user can act on")
    code = serializers.CharField()
    field = serializers.CharField(required=False, help_text="The request field at fault")


class LimitErrorSerializer(ErrorSerializer):
    """429: the team's limit of parallel trainings (with actionName and actionLimit), or the caller's
    rate limit (code `throttled`, with a Retry-After header)."""

    actionName = serializers.CharField(required=False)  # noqa: N815
    actionLimit = serializers.IntegerField(required=False)  # noqa: N815


class ValidationErrorItemSerializer(serializers.Serializer):
    loc = serializers.ListField(child=serializers.JSONField())
    msg = serializers.CharField()
    type = serializers.CharField()


class HTTPValidationErrorSerializer(serializers.Serializer):
    detail = ValidationErrorItemSerializer(many=True)


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


def pairs_output(pairs: list[Pair]) -> dict[str, Any]:
    return {"count": len(pairs), "pairs": PairSerializer(pairs, many=True).data}
