"""The staff's console. Every action calls the same services as the API; nothing here decides a rule.

Staff see the teams they belong to; superusers see everything.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from models_app import admin_console
from models_app.errors import ApplicationError, Conflict, InvalidInput
from models_app.input_rules import CAPTION_MAX, DESCRIPTION_MAX, INSTRUCTION_MAX, NAME_MAX, TRIGGER_WORD_MAX, text_check
from models_app.media_access import media_url
from models_app.models import (
    ApiKey,
    Asset,
    CreditEntry,
    GenerationJob,
    Membership,
    Model,
    Pair,
    Project,
    Team,
    TrainingCheckpoint,
    TrainingImage,
    TrainingSample,
    TrainingTask,
    WebhookDelivery,
)
from models_app.services.accounts import api_key_create, api_key_revoke, api_key_token
from models_app.services.training import (
    training_cancel,
    training_start,
    training_task_cancel,
    training_task_set_priority,
)

THUMBNAIL_HTML = (
    '<img src="{}" alt="{}" style="height:{}px;width:auto;border-radius:4px;background:#eee" loading="lazy">'
)
STATUS_COLOURS = {
    "new": "#888",
    "queued": "#b58900",
    "training": "#268bd2",
    "ready": "#2aa15a",
    "failed": "#dc322f",
    "canceled": "#6c71c4",
    "deleted": "#555",
    "PENDING": "#b58900",
    "PREPROCESSING": "#268bd2",
    "TRAINING": "#268bd2",
    "COMPLETED": "#2aa15a",
    "FAILED": "#dc322f",
    "CANCELLED": "#6c71c4",
}


class TextRulesForm(forms.ModelForm):
    """An admin form whose text fields meet the same rules as every other door (models_app/input_rules.py):
    `text_rules` maps a field to its (maximum length, multi-line)."""

    text_rules: dict[str, tuple[int, bool]] = {}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name, (max_length, multiline) in self.text_rules.items():
            value = cleaned.get(name)
            if isinstance(value, str):
                try:
                    text_check(value, field=name, max_length=max_length, multiline=multiline)
                except InvalidInput as exc:
                    self.add_error(name, exc.message)
        return cleaned


def text_rules_form(model: type[Any], rules: dict[str, tuple[int, bool]]) -> type[forms.ModelForm]:
    meta = type("Meta", (), {"model": model, "fields": "__all__"})
    return type(f"{model.__name__}AdminForm", (TextRulesForm,), {"Meta": meta, "text_rules": rules})


def thumbnail(asset: Asset | None, size: int = 64) -> str:
    if asset is None or not asset.file:
        return "-"
    return format_html(THUMBNAIL_HTML, media_url(asset.file, absolute=False), asset.original_name, size)


def badge(status: str) -> str:
    return format_html(
        '<span style="background:{};color:#fff;padding:2px 8px;border-radius:10px;font-size:11px">{}</span>',
        STATUS_COLOURS.get(status, "#888"),
        status,
    )


class TeamScopedAdmin(admin.ModelAdmin):
    """Staff see and pick only their own teams' rows; superusers see all."""

    team_path = "team"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{f"{self.team_path}__in": admin_console.staff_teams(request)})

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if not request.user.is_superuser:
            teams = admin_console.staff_teams(request)
            if db_field.related_model is Team:
                kwargs["queryset"] = teams
            elif db_field.related_model in (Project, Model, Asset):
                kwargs["queryset"] = db_field.related_model.objects.filter(team__in=teams)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(TeamScopedAdmin):
    team_path = "pk"
    list_display = ["name", "public_id", "credit_balance", "max_parallel_trainings", "member_count", "created_at"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id", "credit_balance", "created_at"]
    inlines = [MembershipInline]
    actions = ["create_api_key"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Team]:
        return super().get_queryset(request).annotate(members_total=Count("memberships", distinct=True))

    @admin.display(description="Members", ordering="members_total")
    def member_count(self, obj: Team) -> int:
        return obj.members_total  # type: ignore[attr-defined]

    @admin.action(description="Create an API key (its secret is shown once)")
    def create_api_key(self, request: HttpRequest, queryset: QuerySet[Team]) -> None:
        for team in queryset:
            creator = request.user if isinstance(request.user, User) else None  # only signed-in staff reach an action
            api_key, secret = api_key_create(team=team, name=f"admin: {request.user}", created_by=creator)
            self.message_user(
                request,
                f"{team.name}: {api_key_token(api_key, secret)} — copy it now, it will not be shown again.",
                messages.WARNING,
            )


@admin.register(Project)
class ProjectAdmin(TeamScopedAdmin):
    list_display = ["name", "public_id", "team", "created_at"]
    list_filter = ["team"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id", "created_at"]
    list_select_related = ["team"]


@admin.register(Membership)
class MembershipAdmin(TeamScopedAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    list_select_related = ["user", "team"]


@admin.register(ApiKey)
class ApiKeyAdmin(TeamScopedAdmin):
    list_display = ["key", "name", "team", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["team"]
    search_fields = ["key", "name"]
    readonly_fields = ["key", "team", "secret_hash", "created_by", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["team"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created from the team's page (the secret is shown once there)

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked, already = 0, 0
        for api_key in queryset:
            try:
                api_key_revoke(api_key=api_key)
                revoked += 1
            except Conflict:
                already += 1
        note = f"; {already} were already revoked" if already else ""
        self.message_user(request, f"{revoked} key(s) revoked{note}", messages.SUCCESS)


@admin.register(Asset)
class AssetAdmin(TeamScopedAdmin):
    list_display = ["preview", "public_id", "original_name", "team", "kind", "format", "width", "height", "created_at"]
    list_filter = ["kind", "format", "team", "created_at"]
    search_fields = ["public_id", "original_name", "sha256"]
    readonly_fields = ["preview_large", "public_id", "format", "width", "height", "size_bytes", "sha256", "created_at"]
    list_select_related = ["team"]

    @admin.display(description="Image")
    def preview(self, obj: Asset) -> str:
        return thumbnail(obj)

    @admin.display(description="Preview")
    def preview_large(self, obj: Asset) -> str:
        return thumbnail(obj, 256)


class TrainingTaskInline(admin.TabularInline):
    model = TrainingTask
    extra = 0
    fields = readonly_fields = (
        "id",
        "status",
        "progress",
        "current_step",
        "total_steps",
        "created_at",
        "error_message",
    )
    can_delete = False
    show_change_link = True
    ordering = ["-created_at"]

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Model)
class ModelAdmin(TeamScopedAdmin):
    """A model's page is its dataset workspace (see templates/admin/models_app/model/change_form.html)."""

    list_display = ["name", "public_id", "team", "type", "status_badge", "image_count", "created_at"]
    list_filter = ["status", "type", "team", "created_at"]
    search_fields = ["name", "public_id", "trigger_word"]
    readonly_fields = ["public_id", "uuid", "status", "trained_task", "created_at", "updated_at", "deleted_at"]
    fields = ["name", "team", "project", "type", "trigger_word", "short_description", *readonly_fields]
    list_select_related = ["team"]
    inlines = [TrainingTaskInline]
    actions = ["start_training", "cancel_training"]
    change_form_template = "admin/models_app/model/change_form.html"
    form = text_rules_form(
        Model,
        {
            "name": (NAME_MAX, False),
            "trigger_word": (TRIGGER_WORD_MAX, False),
            "short_description": (DESCRIPTION_MAX, True),
        },
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Model]:
        return super().get_queryset(request).annotate(training_images_count=Count("training_images"))

    @admin.display(description="Images", ordering="training_images_count")
    def image_count(self, obj: Model) -> int:
        return obj.training_images_count  # type: ignore[attr-defined]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Model) -> str:
        return badge(obj.status)

    def get_urls(self) -> list[URLPattern]:
        def view(function: Any) -> Any:
            return self.admin_site.admin_view(require_POST(function))

        return [
            path("<int:pk>/upload/", view(admin_console.upload), name="models_app_model_upload"),
            path("<int:pk>/configure/", view(admin_console.configure), name="models_app_model_configure"),
            path("<int:pk>/start/", view(admin_console.start), name="models_app_model_start"),
            path("<int:pk>/cancel/", view(admin_console.cancel), name="models_app_model_cancel"),
            path("<int:pk>/pairs/", view(admin_console.set_pairs), name="models_app_model_pairs"),
            path(
                "<int:pk>/images/<int:image_pk>/caption/", view(admin_console.caption), name="models_app_model_caption"
            ),
            path(
                "<int:pk>/images/<int:image_pk>/delete/",
                view(admin_console.delete_image),
                name="models_app_model_delete_image",
            ),
            path(
                "<int:pk>/images/<int:image_pk>/replace/",
                view(admin_console.replace_image),
                name="models_app_model_replace_image",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        model = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if model is not None:
            context["workspace"] = admin_console.workspace_context(model)
            context["upload_limits"] = admin_console.upload_limits()
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.action(description="Start training of the selected models")
    def start_training(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        for model in queryset:
            try:
                training_start(model=model)
            except ApplicationError as exc:
                self.message_user(request, f"{model.name}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{model.name}: training queued", messages.SUCCESS)

    @admin.action(description="Cancel training of the selected models")
    def cancel_training(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        for model in queryset:
            try:
                training_cancel(model=model)
            except ApplicationError as exc:
                self.message_user(request, f"{model.name}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{model.name}: cancel requested", messages.SUCCESS)


@admin.register(TrainingImage)
class TrainingImageAdmin(TeamScopedAdmin):
    team_path = "model__team"
    list_display = ["preview", "name", "model", "description", "created_at"]
    list_filter = ["model__team"]
    search_fields = ["name", "description", "asset__public_id", "model__public_id"]
    readonly_fields = [
        "preview_large",
        "model",
        "asset",
        "name",
        "automatic_captioning",
        "sidecar_caption",
        "created_at",
    ]
    fields = [
        "preview_large",
        "model",
        "asset",
        "name",
        "description",
        "automatic_captioning",
        "sidecar_caption",
        "created_at",
    ]
    list_select_related = ["asset", "model"]
    form = text_rules_form(TrainingImage, {"description": (CAPTION_MAX, True)})

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # images are added on the model's page, which verifies them

    @admin.display(description="Image")
    def preview(self, obj: TrainingImage) -> str:
        return thumbnail(obj.asset)

    @admin.display(description="Preview")
    def preview_large(self, obj: TrainingImage) -> str:
        return thumbnail(obj.asset, 256)


@admin.register(Pair)
class PairAdmin(TeamScopedAdmin):
    team_path = "model__team"
    list_display = ["model", "source_preview", "target_preview", "instruction", "position"]
    list_select_related = ["model", "source__asset", "target__asset"]
    raw_id_fields = ["source", "target"]
    form = text_rules_form(Pair, {"instruction": (INSTRUCTION_MAX, True)})

    @admin.display(description="Source")
    def source_preview(self, obj: Pair) -> str:
        return thumbnail(obj.source.asset)

    @admin.display(description="Target")
    def target_preview(self, obj: Pair) -> str:
        return thumbnail(obj.target.asset)


TASK_SUMMARY_FIELDS = (
    "model",
    "team",
    "status",
    "progress",
    "current_step",
    "total_steps",
    "eta_seconds",
    "priority",
    "attempt_count",
    "attempts_table",
    "failure_reason",
    "error_message",
    "weights",
    "weights_kohya",
)
TASK_FIELDS = [f.name for f in TrainingTask._meta.fields]


@admin.register(TrainingTask)
class TrainingTaskAdmin(TeamScopedAdmin):
    """A task's page shows it live (see templates/admin/models_app/trainingtask/change_form.html)."""

    list_display = [
        "short_id",
        "model",
        "team",
        "status_badge",
        "progress_bar",
        "current_step",
        "total_steps",
        "priority",
        "attempt_count",
        "created_at",
    ]
    list_filter = ["status", "training_type", "priority", "team", "created_at"]
    search_fields = ["id", "model__public_id", "model__name", "trigger_word"]
    list_select_related = ["model", "team"]
    readonly_fields = [*(f.name for f in TrainingTask._meta.fields), "attempts_table"]
    fieldsets = [
        ("Summary", {"fields": TASK_SUMMARY_FIELDS}),
        (
            "Every field (seed 003's TrainingTask and the worker's bookkeeping)",
            {"classes": ["collapse"], "fields": [name for name in TASK_FIELDS if name not in TASK_SUMMARY_FIELDS]},
        ),
    ]
    actions = ["cancel_tasks", "priority_urgent", "priority_high", "priority_normal", "priority_low"]
    change_form_template = "admin/models_app/trainingtask/change_form.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a task is created by starting a training, which checks the rules

    @admin.display(description="Attempts")
    def attempts_table(self, obj: TrainingTask) -> str:
        """Each attempt's worker, start, seconds per phase and outcome (a lost one has none)."""
        history = list(obj.attempt_history or [])
        running = obj.status in TrainingTask.RUNNING_STATUSES
        unended = "lost (the worker stopped answering)"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    entry.get("attempt", ""),
                    entry.get("worker", ""),
                    str(entry.get("started_at", ""))[:19].replace("T", " "),
                    ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in entry.get("stage_seconds", {}).items()),
                    entry.get("outcome", "running" if running and index == len(history) - 1 else unended),
                )
                for index, entry in enumerate(history)
            ),
        )
        if not rows:
            return "-"
        header = "<tr><th>#</th><th>worker</th><th>started</th><th>phases</th><th>outcome</th></tr>"
        return format_html("<table>{}{}</table>", mark_safe(header), rows)

    @admin.display(description="Task", ordering="created_at")
    def short_id(self, obj: TrainingTask) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: TrainingTask) -> str:
        return badge(obj.status)

    @admin.display(description="Progress", ordering="progress")
    def progress_bar(self, obj: TrainingTask) -> str:
        return format_html(
            '<div style="width:120px;background:#eee;border-radius:3px"><div style="width:{}%;background:#2aa15a;'
            'height:8px;border-radius:3px"></div></div>',
            round(obj.progress),
        )

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<uuid:pk>/progress/",
                self.admin_site.admin_view(admin_console.task_progress),
                name="models_app_task_progress",
            ),
            path(
                "<uuid:pk>/cancel/",
                self.admin_site.admin_view(require_POST(admin_console.task_cancel)),
                name="models_app_task_cancel",
            ),
            path(
                "<uuid:pk>/priority/",
                self.admin_site.admin_view(require_POST(admin_console.task_priority)),
                name="models_app_task_priority",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        task = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if task is not None:
            context.update(
                samples=task.samples.all(),
                checkpoints=[
                    (checkpoint, [(name, media_url(stored, request)) for name, stored in checkpoint.files.items()])
                    for checkpoint in task.checkpoints.filter(snapshot=False)  # snapshots are the worker's
                ],
                deliveries=task.webhook_deliveries.all()[:50],
                priorities=TrainingTask.Priority.choices,
                active_statuses=list(TrainingTask.ACTIVE_STATUSES),
                # The summary's status shows the label, as Django renders it; the live script keeps it current.
                status_labels=json.dumps(dict(TrainingTask.Status.choices)),
            )
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.action(description="Cancel the selected trainings")
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[TrainingTask]) -> None:
        for task in queryset:
            try:
                training_task_cancel(task=task)
            except ApplicationError as exc:
                self.message_user(request, f"{str(task.pk)[:8]}: {exc.message}", messages.ERROR)

    def _set_priority(self, request: HttpRequest, queryset: QuerySet[TrainingTask], priority: int) -> None:
        for task in queryset:
            try:
                training_task_set_priority(task=task, priority=priority)
            except ApplicationError as exc:
                self.message_user(request, f"{str(task.pk)[:8]}: {exc.message}", messages.ERROR)

    @admin.action(description="Priority: urgent")
    def priority_urgent(self, request: HttpRequest, queryset: QuerySet[TrainingTask]) -> None:
        self._set_priority(request, queryset, 3)

    @admin.action(description="Priority: high")
    def priority_high(self, request: HttpRequest, queryset: QuerySet[TrainingTask]) -> None:
        self._set_priority(request, queryset, 2)

    @admin.action(description="Priority: normal")
    def priority_normal(self, request: HttpRequest, queryset: QuerySet[TrainingTask]) -> None:
        self._set_priority(request, queryset, 1)

    @admin.action(description="Priority: low")
    def priority_low(self, request: HttpRequest, queryset: QuerySet[TrainingTask]) -> None:
        self._set_priority(request, queryset, 0)


class ReadOnlyAdmin(TeamScopedAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TrainingSample)
class TrainingSampleAdmin(ReadOnlyAdmin):
    team_path = "task__team"
    list_display = ["preview", "task", "step", "prompt", "created_at"]
    list_select_related = ["task"]

    @admin.display(description="Image")
    def preview(self, obj: TrainingSample) -> str:
        return format_html(THUMBNAIL_HTML, media_url(obj.file, absolute=False), obj.prompt, 64) if obj.file else "-"


@admin.register(TrainingCheckpoint)
class TrainingCheckpointAdmin(ReadOnlyAdmin):
    team_path = "task__team"
    list_display = ["task", "step", "created_at"]
    list_select_related = ["task"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TrainingCheckpoint]:
        # The user's checkpoints only: a worker's crash-safety snapshot is not one of them.
        return super().get_queryset(request).filter(snapshot=False)


@admin.register(CreditEntry)
class CreditEntryAdmin(ReadOnlyAdmin):
    list_display = ["team", "kind", "amount", "balance_after", "task", "note", "created_at"]
    list_filter = ["kind", "team", "created_at"]
    list_select_related = ["team", "task"]


@admin.register(GenerationJob)
class GenerationJobAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "model", "team", "status", "num_images", "created_at", "completed_at"]
    list_filter = ["status", "team", "created_at"]
    search_fields = ["public_id", "prompt"]
    list_select_related = ["model", "team"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["event", "task", "team", "status", "attempts", "response_status", "created_at", "delivered_at"]
    list_filter = ["status", "event", "team", "created_at"]
    list_select_related = ["task", "team"]
