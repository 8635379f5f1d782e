"""The staff's console. Every form, delete and action calls the same services as the API; nothing here
decides a rule. A service's refusal is shown on the form (ServiceForm) or as a message, never a 500.

Staff see the teams they belong to; superusers see everything. The markup of the list cells is in
templates/admin/models_app/cells/, the styles in models_app/static/models_app/admin.css.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.auth.models import User
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.views.decorators.http import require_POST

from models_app import admin_console
from models_app.admin_parameters import (
    add_parameter_fields,
    effective_parameters_table,
    is_parameter_field,
    parameter_fieldsets,
    parameter_of,
    parameter_overrides,
)
from models_app.admin_parameters import field_name as parameter_field
from models_app.errors import ApplicationError, Conflict
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
    WorkerMachine,
)
from models_app.services.accounts import (
    api_key_create,
    api_key_revoke,
    api_key_token,
    membership_remove,
    membership_set,
    project_create,
    team_create,
)
from models_app.services.assets import asset_create
from models_app.services.datasets import (
    model_create,
    model_delete,
    model_update,
    training_image_delete,
    training_image_set_caption,
)
from models_app.services.training import (
    training_cancel,
    training_start,
    training_task_cancel,
    training_task_set_priority,
)


class ServiceForm(forms.ModelForm):
    """An admin form that a service saves. Once the form's own checks pass, `save_with_service` writes
    (inside the transaction the admin's add and change views hold) and a refusal becomes a form error:
    the service decides, the form only shows. The admin then has nothing left to save (ServiceAdmin)."""

    # Services name a field as the API does; the form's name where it differs.
    service_fields: dict[str, str] = {}
    saved_by_service = False

    def save_with_service(self) -> Any:
        """Write through the service and return the saved row; None where no service saves this form."""
        raise NotImplementedError

    def form_field(self, service_field: str | None) -> str | None:
        """The form's field a service's refusal concerns (None: the form as a whole)."""
        field = self.service_fields.get(service_field or "", service_field)
        return field if field in self.fields else None

    def full_clean(self) -> None:
        super().full_clean()
        if not self.is_bound or self.errors:
            return
        try:
            saved = self.save_with_service()
        except ApplicationError as exc:
            self.add_error(self.form_field(exc.field), exc.message)
            return
        if saved is not None:
            self.instance, self.saved_by_service = saved, True


class ServiceAdmin(admin.ModelAdmin):
    """An admin whose form is a ServiceForm: what the service saved is not saved again, and a delete goes
    through `delete_with_service` (a refusal is a message on the row's page)."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not getattr(form, "saved_by_service", False):
            super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        for formset in formsets:
            formset.instance = form.instance  # the row the service saved, not the one the form started with
        super().save_related(request, form, formsets, change)

    def delete_with_service(self, obj: Any) -> None:
        obj.delete()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self.delete_with_service(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        refused = []
        for obj in queryset:
            try:
                self.delete_with_service(obj)
            except ApplicationError as exc:
                refused.append(f"{obj}: {exc.message}")
        for message in refused:
            self.message_user(request, f"Not deleted: {message}", messages.ERROR)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except ApplicationError as exc:  # the view's transaction is rolled back; nothing was deleted
            self.message_user(request, f"Not deleted: {exc.message}", messages.ERROR)
            opts = self.opts
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id]))


def thumbnail(file: Any, alt: str, *, large: bool = False) -> str:
    if not file:
        return "-"
    return render_to_string(
        "admin/models_app/cells/thumbnail.html",
        {"url": media_url(file, absolute=False), "alt": alt, "large": large},
    )


def asset_thumbnail(asset: Asset | None, *, large: bool = False) -> str:
    return thumbnail(asset.file, asset.original_name, large=large) if asset is not None else "-"


def badge(status: str, *, detail: str = "") -> str:
    return render_to_string("admin/models_app/cells/status_badge.html", {"status": status, "detail": detail})


def clipped(text: str, title: str, *, detail: str = "") -> str:
    """A list cell cut to its column's width (the whole in its title), with an optional second line."""
    return render_to_string("admin/models_app/cells/clipped.html", {"text": text, "title": title, "detail": detail})


class TeamListFilter(admin.RelatedFieldListFilter):
    """A team filter offers the user's own teams (Django's lists every team there is), each named with its
    id: two teams may share a name (Team.__str__)."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list[Any]:
        return [(str(team.pk), str(team)) for team in admin_console.staff_teams(request).order_by("name", "public_id")]


class TeamScopedAdmin(ServiceAdmin):
    """Staff see and pick only their own teams' rows; superusers see all."""

    team_path = "team"

    class Media:
        css = {"all": ["models_app/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{f"{self.team_path}__in": admin_console.staff_teams(request)})

    @admin.display(description="Team", ordering="team__name")
    def team_cell(self, obj: Any) -> str:
        return clipped(obj.team.name, str(obj.team), detail=obj.team.public_id)

    @admin.display(description="Created", ordering="created_at")
    def created(self, obj: Any) -> str:
        return date_format(timezone.localtime(obj.created_at), "Y-m-d H:i")

    def get_list_filter(self, request: HttpRequest) -> Any:
        team_filters = ("team", "model__team")
        return [(name, TeamListFilter) if name in team_filters else name for name in super().get_list_filter(request)]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        readonly = list(super().get_readonly_fields(request, obj))
        if obj is not None and self.team_path == "team" and "team" not in readonly:
            readonly.append("team")  # no service moves a row to another team: it stays where it was made
        return readonly

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if not request.user.is_superuser:
            teams = admin_console.staff_teams(request)
            if db_field.related_model is Team:
                kwargs["queryset"] = teams
            elif db_field.related_model in (Project, Model, Asset):
                kwargs["queryset"] = db_field.related_model.objects.filter(team__in=teams)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class MembershipInline(admin.TabularInline):
    """Saved by TeamAdmin.save_formset through the membership services, so that the groups follow."""

    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class TeamAdminForm(ServiceForm):
    class Meta:
        model = Team
        fields = ["name", "max_parallel_trainings"]

    def save_with_service(self) -> Team | None:
        if self.instance.pk is not None:
            return None  # no service changes a team's settings: the admin saves them
        return team_create(name=self.instance.name, max_parallel_trainings=self.instance.max_parallel_trainings)


@admin.register(Team)
class TeamAdmin(TeamScopedAdmin):
    team_path = "pk"
    form = TeamAdminForm
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

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        memberships = formset.save(commit=False)  # collects the deleted rows without deleting them
        for membership in formset.deleted_objects:
            membership_remove(membership=membership)
        for membership in memberships:
            before = Membership.objects.filter(pk=membership.pk).first() if membership.pk else None
            if before is not None and before.user_id != membership.user_id:
                membership_remove(membership=before)  # the row now names someone else
            membership_set(team=form.instance, user=membership.user, role=membership.role)

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


class ProjectAdminForm(ServiceForm):
    class Meta:
        model = Project
        fields = ["name", "team"]

    def save_with_service(self) -> Project | None:
        if self.instance.pk is not None:
            return None  # no service renames a project: the admin saves it (the name stays unique in its team)
        return project_create(team=self.instance.team, name=self.instance.name)


@admin.register(Project)
class ProjectAdmin(TeamScopedAdmin):
    form = ProjectAdminForm
    list_display = ["name", "public_id", "team", "created_at"]
    list_filter = ["team"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id", "created_at"]
    list_select_related = ["team"]


class MembershipAdminForm(ServiceForm):
    class Meta:
        model = Membership
        fields = ["team", "user", "role"]

    def save_with_service(self) -> Membership:
        return membership_set(team=self.instance.team, user=self.instance.user, role=self.instance.role)


@admin.register(Membership)
class MembershipAdmin(TeamScopedAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    list_select_related = ["user", "team"]
    form = MembershipAdminForm

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> Any:
        # A membership is a team and a user; another pair is another membership (added, not edited).
        return [*super().get_readonly_fields(request, obj), *(["user"] if obj is not None else [])]

    def delete_with_service(self, obj: Membership) -> None:
        membership_remove(membership=obj)


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


class AssetAdminForm(ServiceForm):
    class Meta:
        model = Asset
        fields = ["team", "project", "kind", "file"]

    def save_with_service(self) -> Asset | None:
        if self.instance.pk is not None:
            return None  # its file and team are read-only; the admin saves its project and kind
        upload = self.cleaned_data["file"]
        return asset_create(
            team=self.instance.team,
            project=self.instance.project,
            kind=self.instance.kind,
            content=upload.read(),
            name=upload.name or "image",
        )


@admin.register(Asset)
class AssetAdmin(TeamScopedAdmin):
    list_display = ["preview", "public_id", "original_name", "team", "kind", "format", "width", "height", "created_at"]
    list_filter = ["kind", "format", "team", "created_at"]
    search_fields = ["public_id", "original_name", "sha256"]
    readonly_fields = [
        "preview_large",
        "public_id",
        "original_name",
        "format",
        "width",
        "height",
        "size_bytes",
        "sha256",
        "created_at",
    ]
    list_select_related = ["team"]
    form = AssetAdminForm

    def get_readonly_fields(self, request: HttpRequest, obj: Asset | None = None) -> Any:
        # A stored file is replaced through a new asset (verified), never in place.
        return [*super().get_readonly_fields(request, obj), *(["file"] if obj is not None else [])]

    @admin.display(description="Image")
    def preview(self, obj: Asset) -> str:
        return asset_thumbnail(obj)

    @admin.display(description="Preview")
    def preview_large(self, obj: Asset) -> str:
        return asset_thumbnail(obj, large=True)


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


MODEL_FORM_FIELDS = ["name", "team", "project", "type", "trigger_word", "short_description"]


class ModelAdminForm(ServiceForm):
    """A model's own fields and its training parameters: a field per row of the parameter table, made when
    the form is (admin_parameters), so a parameter added to the table is on the form with no change here."""

    service_fields = {"projectId": "project", "shortDescription": "short_description"}

    class Meta:
        model = Model
        fields = MODEL_FORM_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_parameter_fields(self, self.instance.parameters or {})

    def form_field(self, service_field: str | None) -> str | None:
        parameter = parameter_of(service_field)
        return super().form_field(parameter_field(parameter) if parameter else service_field)

    def save_with_service(self) -> Model:
        model = self.instance  # the form's values (the team only on a new model: read-only after)
        values = {
            "name": model.name,
            "type": model.type,
            "project": model.project,
            "trigger_word": model.trigger_word,
            "short_description": model.short_description,
            "parameters": parameter_overrides(self.cleaned_data),  # the overrides as a whole: cleared ones go
        }
        if model.pk is None:
            return model_create(team=model.team, **values)
        return model_update(model=model, **values)


@admin.register(Model)
class ModelAdmin(TeamScopedAdmin):
    """A model's page is its dataset workspace (see templates/admin/models_app/model/change_form.html)."""

    # Sized to fit a 1440 px window beside both sidebars (admin.css: "The model and task lists").
    list_display = ["name_and_id", "team_cell", "type", "status_badge", "image_count", "created"]
    list_filter = ["status", "type", "team", "created_at"]
    search_fields = ["name", "public_id", "trigger_word"]
    readonly_fields = [
        "public_id",
        "uuid",
        "status",
        "trained_task",
        "created_at",
        "updated_at",
        "deleted_at",
        "effective_parameters",
    ]
    list_select_related = ["team"]
    inlines = [TrainingTaskInline]
    actions = ["start_training", "cancel_training"]
    change_form_template = "admin/models_app/model/change_form.html"
    form = ModelAdminForm

    def get_fieldsets(self, request: HttpRequest, obj: Model | None = None) -> Any:
        own = [*MODEL_FORM_FIELDS, *(name for name in self.readonly_fields if name != "effective_parameters")]
        editable = self.has_change_permission(request, obj) if obj else self.has_add_permission(request)
        parameters = parameter_fieldsets(obj.parameters if obj else {}) if editable else []
        effective = {
            "classes": ["collapse"],
            "fields": ["effective_parameters"],
            "description": "What a training started now would use: the defaults merged with this model's overrides.",
        }
        return [(None, {"fields": own}), *parameters, ("Effective parameters", effective)]

    def get_form(self, request: HttpRequest, obj: Model | None = None, change: bool = False, **kwargs: Any) -> Any:
        # The parameter fields are the form's own (made in its __init__ from the table), not the model's columns.
        fields = kwargs.pop("fields", None) or flatten_fieldsets(self.get_fieldsets(request, obj))
        own = [name for name in fields if not is_parameter_field(name)]
        return super().get_form(request, obj, change, fields=own, **kwargs)

    @admin.display(description="Effective parameters")
    def effective_parameters(self, obj: Model) -> str:
        return effective_parameters_table(obj.parameters if obj.pk else {})

    def delete_with_service(self, obj: Model) -> None:
        model_delete(model=obj)  # a soft delete: a live training is cancelled, the rows are kept

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # The confirmation lists what goes: the models alone, as model_delete keeps their rows.
        models = list(objs)
        return [str(model) for model in models], {Model._meta.verbose_name_plural: len(models)}, set(), []

    def get_queryset(self, request: HttpRequest) -> QuerySet[Model]:
        return super().get_queryset(request).annotate(training_images_count=Count("training_images"))

    @admin.display(description="Images", ordering="training_images_count")
    def image_count(self, obj: Model) -> int:
        return obj.training_images_count  # type: ignore[attr-defined]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Model) -> str:
        return badge(obj.status)

    @admin.display(description="Model", ordering="name")
    def name_and_id(self, obj: Model) -> str:
        return clipped(obj.name, str(obj), detail=obj.public_id)

    def get_urls(self) -> list[URLPattern]:
        def view(function: Any) -> Any:
            return self.admin_site.admin_view(require_POST(function))

        return [
            path("<int:pk>/upload/", view(admin_console.upload), name="models_app_model_upload"),
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
            path(
                "<int:pk>/images/<int:image_pk>/thumbnail/",
                self.admin_site.admin_view(admin_console.thumbnail),
                name="models_app_model_thumbnail",
            ),
            path("<int:pk>/state/", self.admin_site.admin_view(admin_console.state), name="models_app_model_state"),
            path(
                "<int:pk>/captions/trigger/",
                view(admin_console.captions_add_trigger),
                name="models_app_model_captions_trigger",
            ),
            path(
                "<int:pk>/captions/replace/",
                view(admin_console.captions_replace),
                name="models_app_model_captions_replace",
            ),
            path(
                "<int:pk>/captions/automatic/",
                view(admin_console.autocaption),
                name="models_app_model_captions_automatic",
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


class TrainingImageAdminForm(ServiceForm):
    class Meta:
        model = TrainingImage
        fields = ["description"]

    def save_with_service(self) -> TrainingImage:
        return training_image_set_caption(training_image=self.instance, description=self.instance.description)


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
    form = TrainingImageAdminForm

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # images are added on the model's page, which verifies them

    def delete_with_service(self, obj: TrainingImage) -> None:
        training_image_delete(training_image=obj)

    @admin.display(description="Image")
    def preview(self, obj: TrainingImage) -> str:
        return asset_thumbnail(obj.asset)

    @admin.display(description="Preview")
    def preview_large(self, obj: TrainingImage) -> str:
        return asset_thumbnail(obj.asset, large=True)


@admin.register(Pair)
class PairAdmin(TeamScopedAdmin):
    """A list to look at: a model's pairs are edited as a whole on its page (pairs_replace checks the set)."""

    team_path = "model__team"
    list_display = ["model", "source_preview", "target_preview", "instruction", "position"]
    list_select_related = ["model", "source__asset", "target__asset"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Pair | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Pair | None = None) -> bool:
        return False

    @admin.display(description="Source")
    def source_preview(self, obj: Pair) -> str:
        return asset_thumbnail(obj.source.asset)

    @admin.display(description="Target")
    def target_preview(self, obj: Pair) -> str:
        return asset_thumbnail(obj.target.asset)


def devices_text(machine: str, devices: list[int]) -> str:
    return f"{machine}: GPU {', '.join(str(index) for index in devices)}" if machine and devices else "-"


@admin.register(WorkerMachine)
class WorkerMachineAdmin(admin.ModelAdmin):
    """The machines the workers advertised, and which trainings hold which of their devices. A machine
    retired for good can be deleted here (its size then no longer counts for the `gpus` check)."""

    list_display = ["name", "device_type", "gpus", "devices_in_use", "last_seen_at"]
    readonly_fields = ("name", "device_type", "gpus", "devices_in_use", "last_seen_at", "created_at")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a machine is registered by its workers

    @admin.display(description="In use")
    def devices_in_use(self, obj: WorkerMachine) -> str:
        held = TrainingTask.objects.filter(machine=obj.name, status__in=TrainingTask.RUNNING_STATUSES)
        parts = [f"GPU {', '.join(str(d) for d in task.devices)}: task {str(task.pk)[:8]}" for task in held]
        return "; ".join(parts) or "none"


TASK_SUMMARY_FIELDS = (
    "model",
    "team",
    "status",
    "progress",
    "current_step",
    "total_steps",
    "eta_seconds",
    "priority",
    "gpus",
    "devices_held",
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

    # Sized to fit a 1440 px window beside both sidebars (admin.css: "The model and task lists").
    list_display = ["short_id", "model_cell", "status_badge", "progress_bar", "priority", "created"]
    list_filter = ["status", "training_type", "priority", "team", "created_at"]
    search_fields = ["id", "model__public_id", "model__name", "trigger_word"]
    list_select_related = ["model", "team"]
    readonly_fields = [*(f.name for f in TrainingTask._meta.fields), "attempts_table", "devices_held"]
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
        if not history:
            return "-"
        running = obj.status in TrainingTask.RUNNING_STATUSES
        unended = "lost (the worker stopped answering)"
        attempts = [
            {
                "number": entry.get("attempt", ""),
                "worker": entry.get("worker", ""),
                "started": str(entry.get("started_at", ""))[:19].replace("T", " "),
                "phases": ", ".join(
                    f"{stage} {seconds:.1f} s" for stage, seconds in entry.get("stage_seconds", {}).items()
                ),
                "outcome": entry.get("outcome", "running" if running and index == len(history) - 1 else unended),
            }
            for index, entry in enumerate(history)
        ]
        return render_to_string("admin/models_app/cells/attempts_table.html", {"attempts": attempts})

    @admin.display(description="Devices held")
    def devices_held(self, obj: TrainingTask) -> str:
        return devices_text(obj.machine, obj.devices) if obj.status in TrainingTask.RUNNING_STATUSES else "-"

    @admin.display(description="Task", ordering="created_at")
    def short_id(self, obj: TrainingTask) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: TrainingTask) -> str:
        retried = obj.attempt_count > 1
        return badge(obj.status, detail=f"attempt {obj.attempt_count} of {obj.max_attempts}" if retried else "")

    @admin.display(description="Progress", ordering="progress")
    def progress_bar(self, obj: TrainingTask) -> str:
        steps = f"{obj.current_step} / {obj.total_steps}"
        return render_to_string(
            "admin/models_app/cells/progress_bar.html", {"percent": round(obj.progress), "steps": steps}
        )

    @admin.display(description="Model and team", ordering="model__name")
    def model_cell(self, obj: TrainingTask) -> str:
        return clipped(obj.model.name, f"{obj.model} in {obj.team}", detail=f"{obj.team.name} · {obj.team.public_id}")

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
                samples=admin_console.sample_entries(task, request),
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
        return thumbnail(obj.file, obj.prompt)


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
