"""The admin's training console: the endpoints behind the dataset workspace and the live task page.

Each view is a thin caller of the services the API uses; it answers JSON for the page's scripts.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse

from models_app.errors import ApplicationError, InvalidInput
from models_app.input_rules import json_document
from models_app.media_access import media_url
from models_app.models import Model, Team, TrainingImage, TrainingTask
from models_app.services.datasets import (
    pairs_replace,
    training_image_delete,
    training_image_replace,
    training_image_set_caption,
    training_images_add,
)
from models_app.services.image_sources import ImageSource
from models_app.services.training import (
    image_count_bounds,
    training_cancel,
    training_quote,
    training_start,
    training_task_cancel,
    training_task_set_priority,
)

# Below this, an image is flagged: it will be upscaled to the training resolution.
RECOMMENDED_MIN_SIDE = 512


def staff_teams(request: HttpRequest) -> Any:
    user = request.user
    if not isinstance(user, User):  # the console's views are staff-only: no one signed in, no team
        return Team.objects.none()
    return Team.objects.all() if user.is_superuser else Team.objects.filter(memberships__user=user)


def require(request: HttpRequest, permission: str) -> None:
    """403 unless the user's role grants `permission` (models_app/permissions.py; superusers have all)."""
    if not request.user.has_perm(f"models_app.{permission}"):
        raise PermissionDenied(f"your role in the team does not allow this ({permission})")


def scoped_model(request: HttpRequest, pk: int, *, permission: str = "view_model") -> Model:
    """The model if it is one of the user's teams' (404 otherwise) and their role grants `permission`."""
    model = get_object_or_404(Model.objects.filter(team__in=staff_teams(request)).select_related("team"), pk=pk)
    require(request, permission)
    return model


def scoped_task(request: HttpRequest, pk: str, *, permission: str = "view_trainingtask") -> TrainingTask:
    task = get_object_or_404(TrainingTask.objects.filter(team__in=staff_teams(request)).select_related("model"), pk=pk)
    require(request, permission)
    return task


def answer(work: Any) -> JsonResponse:
    """Run a service call; an application error becomes its status and message for the page to show."""
    try:
        return JsonResponse(work() or {"ok": True})
    except ApplicationError as exc:
        return JsonResponse({"detail": exc.message, "field": exc.field, **exc.extra}, status=exc.status_code)


def workspace_context(model: Model) -> dict[str, Any]:
    """Everything the model page shows about its dataset and its next training."""
    images = list(model.training_images.select_related("asset").order_by("created_at", "id"))
    hashes = Counter(image.asset.sha256 for image in images)
    low, high = image_count_bounds(model)
    cards = []
    for image in images:
        asset = image.asset
        problems = []
        if min(asset.width, asset.height) < RECOMMENDED_MIN_SIDE:
            problems.append(f"small: {asset.width}x{asset.height}, under {RECOMMENDED_MIN_SIDE} px")
        if hashes[asset.sha256] > 1:
            problems.append("duplicate of another image here")
        if not image.description.strip():
            problems.append("no caption")
        cards.append({"image": image, "asset": asset, "problems": problems})
    try:
        quote: dict[str, Any] | None = training_quote(model=model)
        quote_error = ""
    except ApplicationError as exc:
        quote, quote_error = None, exc.message
    count = len(images)
    task = model.training_tasks.order_by("-created_at").first()
    pairs = list(model.pairs.select_related("source__asset", "target__asset"))
    return {
        "cards": cards,
        "count": count,
        "bounds": (low, high),
        "count_ok": model.type == Model.Type.EDIT or low <= count <= high,
        "quote": quote,
        "quote_error": quote_error,
        "overrides": [(name, json.dumps(value)) for name, value in model.parameters.items()],  # edited on the form
        "task": task,
        "task_url": reverse("admin:models_app_trainingtask_change", args=[task.pk]) if task else None,
        "pairs": pairs,
        "is_edit": model.type == Model.Type.EDIT,
        "priorities": TrainingTask.Priority.choices,
    }


def upload(request: HttpRequest, pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="change_trainingimage")
    files = request.FILES.getlist("images")

    def work() -> dict[str, Any]:
        if not files:
            raise InvalidInput("choose or drop one or more image files", field="images")
        sources = [ImageSource(name=f.name or "image", content=f.read()) for f in files]
        added = training_images_add(model=model, sources=sources, field="images")
        return {"added": len(added)}

    return answer(work)


def caption(request: HttpRequest, pk: int, image_pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="change_trainingimage")
    image = get_object_or_404(TrainingImage, pk=image_pk, model=model)
    text = request.POST.get("description", "")
    return answer(
        lambda: {"description": training_image_set_caption(training_image=image, description=text).description}
    )


def delete_image(request: HttpRequest, pk: int, image_pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="change_trainingimage")
    image = get_object_or_404(TrainingImage, pk=image_pk, model=model)
    return answer(lambda: training_image_delete(training_image=image))


def replace_image(request: HttpRequest, pk: int, image_pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="change_trainingimage")
    image = get_object_or_404(TrainingImage, pk=image_pk, model=model)
    upload_file = request.FILES.get("image")

    def work() -> dict[str, Any]:
        if upload_file is None:
            raise InvalidInput("choose an image file", field="image")
        replaced = training_image_replace(
            training_image=image, content=upload_file.read(), name=upload_file.name or "image"
        )
        return {"id": replaced.public_id}

    return answer(work)


def start(request: HttpRequest, pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="add_trainingtask")

    def work() -> dict[str, Any]:
        task = training_start(model=model)
        return {"task": str(task.pk), "url": reverse("admin:models_app_trainingtask_change", args=[task.pk])}

    return answer(work)


def cancel(request: HttpRequest, pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="change_trainingtask")
    return answer(lambda: {"status": training_cancel(model=model).status})


def set_pairs(request: HttpRequest, pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="change_pair")

    def work() -> dict[str, Any]:
        pairs = json_document(request.POST.get("pairs") or "[]", field="pairs")
        if not isinstance(pairs, list):
            raise InvalidInput("pairs must be a JSON list of {source_id, target_id, instruction}", field="pairs")
        return {"count": len(pairs_replace(model=model, pairs=pairs))}

    return answer(work)


def task_progress(request: HttpRequest, pk: str) -> JsonResponse:
    """What the task page refreshes every two seconds."""
    task = scoped_task(request, pk)
    return JsonResponse(
        {
            "status": task.status,
            "stage": task.preprocessing_stage
            if task.status == TrainingTask.Status.PREPROCESSING
            else task.status.lower(),
            "progress": task.progress,
            "current_step": task.current_step,
            "total_steps": task.total_steps,
            "eta_seconds": task.eta_seconds,
            "loss": task.loss,
            "loss_history": task.loss_history,
            "validation_history": task.validation_history,
            "logs": task.logs[-4000:],
            "error_message": task.error_message,
            "samples": sample_entries(task, request),
            "finished": task.status not in TrainingTask.ACTIVE_STATUSES,
            "cancel_requested": task.cancel_requested_at is not None,
            "attempt_count": task.attempt_count,
            "model_status": task.model.status,
        }
    )


def sample_entries(task: TrainingTask, request: HttpRequest) -> list[dict[str, Any]]:
    """The task's samples as its page draws them: a grid of steps (rows) by prompt index (columns)."""
    return [
        {"step": s.step, "index": s.index, "prompt": s.prompt, "url": media_url(s.file, request)}
        for s in task.samples.all()
        if s.file
    ]


def task_cancel(request: HttpRequest, pk: str) -> JsonResponse:
    task = scoped_task(request, pk, permission="change_trainingtask")
    return answer(lambda: {"status": training_task_cancel(task=task).status})


def task_priority(request: HttpRequest, pk: str) -> JsonResponse:
    task = scoped_task(request, pk, permission="change_trainingtask")
    try:
        priority = int(request.POST.get("priority", ""))
    except ValueError:
        return JsonResponse({"detail": "priority must be 0, 1, 2 or 3"}, status=400)
    return answer(lambda: {"priority": training_task_set_priority(task=task, priority=priority).priority})


def upload_limits() -> dict[str, Any]:
    return {"max_bytes": settings.IMAGE_MAX_BYTES, "formats": settings.IMAGE_FORMATS}
