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
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from PIL import Image

from contract.captions import has_trigger
from contract.parameters import default, effective_parameters
from models_app import selectors
from models_app.errors import ApplicationError, InvalidInput, NotFound
from models_app.input_rules import json_document
from models_app.media_access import media_url
from models_app.models import Model, Team, TrainingImage, TrainingTask
from models_app.services.credits import training_side
from models_app.services.datasets import (
    LOCKED_STATUSES,
    autocaption_unavailable,
    pairs_replace,
    training_image_delete,
    training_image_replace,
    training_image_set_caption,
    training_images_add,
    training_images_autocaption,
    training_images_captions_add_trigger,
    training_images_captions_replace,
)
from models_app.services.image_sources import ImageSource
from models_app.services.thumbnails import asset_thumbnail_ensure
from models_app.services.training import (
    image_count_bounds,
    training_cancel,
    training_quote,
    training_start,
    training_task_cancel,
    training_task_set_priority,
)

# An image whose shorter side is below the side the model trains at is flagged: it will be upscaled. Where that
# side cannot be known (an unreadable base model), this one is the yardstick.
RECOMMENDED_MIN_SIDE = 512


def staff_teams(request: HttpRequest) -> QuerySet[Team]:
    """The teams the signed-in staff member works on (every team for a superuser)."""
    user = request.user
    if not isinstance(user, User):  # the console's views are staff-only: no one signed in, no team
        return selectors.team_list_for_staff(user_id=None, superuser=False)
    return selectors.team_list_for_staff(user_id=user.pk, superuser=user.is_superuser)


def require(request: HttpRequest, permission: str) -> None:
    """403 unless the user's role grants `permission` (models_app/permissions.py; superusers have all)."""
    if not request.user.has_perm(f"models_app.{permission}"):
        raise PermissionDenied(f"your role in the team does not allow this ({permission})")


def scoped_model(request: HttpRequest, pk: int, *, permission: str = "view_model") -> Model:
    """The model if it is one of the user's teams' (404 otherwise) and their role grants `permission`."""
    try:
        model = selectors.model_in_teams(teams=staff_teams(request), pk=pk)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    require(request, permission)
    return model


def scoped_task(request: HttpRequest, pk: str, *, permission: str = "view_trainingtask") -> TrainingTask:
    try:
        task = selectors.training_task_in_teams(teams=staff_teams(request), pk=pk)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    require(request, permission)
    return task


def scoped_image(model: Model, pk: int) -> TrainingImage:
    """One of the (already scoped) model's training images; 404 otherwise."""
    try:
        return selectors.training_image_of_model(model=model, pk=pk)
    except NotFound as exc:
        raise Http404(exc.message) from exc


def answer(work: Any) -> JsonResponse:
    """Run a service call; an application error becomes its status and message for the page to show."""
    try:
        return JsonResponse(work() or {"ok": True})
    except ApplicationError as exc:
        return JsonResponse({"detail": exc.message, "field": exc.field, **exc.extra}, status=exc.status_code)


def dataset_images(model: Model) -> list[TrainingImage]:
    return list(selectors.training_image_list(model=model))


def captioning_strategy(model: Model) -> str:
    return str(
        model.parameters.get("preprocessing_captioning_strategy") or default("preprocessing_captioning_strategy")
    )


def model_training_side(model: Model) -> int:
    """The side the model's next training would run at (its effective parameters and base model)."""
    parameters = effective_parameters(model.parameters, default_base_model=settings.TRAINING_DEFAULT_BASE_MODEL)
    try:
        return training_side(base_model=str(parameters["base_model_path"]), resolution=parameters["resolution"])
    except ApplicationError:  # a base model that cannot be read: the start will say so
        return RECOMMENDED_MIN_SIDE


def image_problems(model: Model, images: list[TrainingImage]) -> dict[int, list[str]]:
    """What to flag on each image, by image pk. A missing caption is flagged only where the training
    reads the captions: the `description` strategy (`filename` reads the caption file imported beside the
    image instead), never on `edit` models, whose pairs' instructions are their captions."""
    hashes = Counter(image.asset.sha256 for image in images)
    strategy = captioning_strategy(model)
    side = model_training_side(model)
    reads_captions = model.type != Model.Type.EDIT
    flags: dict[int, list[str]] = {}
    for image in images:
        asset = image.asset
        problems = []
        if min(asset.width, asset.height) < side:
            problems.append(f"small: {asset.width}x{asset.height}, under the {side} px it trains at")
        if hashes[asset.sha256] > 1:
            problems.append("duplicate of another image here")
        if reads_captions and strategy == "description" and not image.description.strip():
            problems.append("no caption")
        if reads_captions and strategy == "filename" and not image.sidecar_caption.strip():
            problems.append("no caption file")
        flags[image.pk] = problems
    return flags


STRATEGY_NOTES = {
    "trigger_only": "Captioning strategy trigger_only: every image trains on the trigger word alone, so these "
    "captions are not used (set preprocessing_captioning_strategy to description to train on them).",
    "description": "Captioning strategy description: each image trains on its caption, with the trigger word "
    "added where it lacks it.",
    "filename": "Captioning strategy filename: each image trains on the caption file imported beside it (.txt); "
    "these captions are not used.",
    "automatic": "Captioning strategy automatic: the captioning model writes each caption when the training "
    "starts; these captions are not used.",
}


def caption_tools(model: Model, images: list[TrainingImage]) -> dict[str, Any]:
    """What the caption tools offer, and why one is not available."""
    trigger_word = model.trigger_word
    lacking = sum(
        1 for image in images if image.description.strip() and not has_trigger(image.description, trigger_word)
    )
    if model.type == Model.Type.EDIT:
        note = "An edit model trains on its pairs' instructions (below); these captions are not used."
    else:
        note = STRATEGY_NOTES.get(captioning_strategy(model), "")
    return {
        "trigger_word": trigger_word,
        "lacking_trigger": lacking if trigger_word else 0,
        "trigger_unavailable": "" if trigger_word else "the model has no trigger word: set one in its settings below",
        "autocaption_unavailable": autocaption_unavailable(),
        "automatic_count": sum(1 for image in images if image.automatic_captioning),
        "strategy_note": note,
    }


def thumbnail_url(model: Model, image: TrainingImage) -> str:
    """The stored thumbnail's signed URL, or the view that makes it on first sight."""
    if image.asset.thumbnail:
        return media_url(image.asset.thumbnail, absolute=False)
    return reverse("admin:models_app_model_thumbnail", args=[model.pk, image.pk])


def live_state(model: Model, task: TrainingTask | None) -> dict[str, Any]:
    """Whether the workspace is read-only now and why, with the training that holds it."""
    locked = model.status in LOCKED_STATUSES or model.status == Model.Status.DELETED
    live = task is not None and task.status in TrainingTask.ACTIVE_STATUSES
    cancel_requested = live and task is not None and task.cancel_requested_at is not None
    if model.status == Model.Status.DELETED:
        reason = "This model is deleted: nothing here can change."
    elif model.status == Model.Status.QUEUED:
        reason = "A training is queued: the dataset, captions, pairs and settings are read-only until it ends."
    elif model.status == Model.Status.TRAINING and task is not None:
        stage = task.preprocessing_stage if task.status == TrainingTask.Status.PREPROCESSING else "training"
        reason = (
            f"Training now ({stage}, {task.progress:.0f}%, step {task.current_step} of {task.total_steps}): the "
            "dataset, captions, pairs and settings are read-only until it ends."
        )
    else:
        reason = ""
    if reason and cancel_requested:
        reason += " Cancel requested: it stops at its next step."
    return {
        "status": model.status,
        "status_label": model.get_status_display(),
        "locked": locked,
        "reason": reason,
        "can_cancel": model.status in LOCKED_STATUSES and live and not cancel_requested,
        "task": None
        if task is None
        else {
            "url": reverse("admin:models_app_trainingtask_change", args=[task.pk]),
            "status": task.status,
            "progress": round(task.progress),
            "live": live,
        },
    }


def workspace_state(
    model: Model,
    *,
    images: list[TrainingImage] | None = None,
    flags: dict[int, list[str]] | None = None,
    task: TrainingTask | None = None,
    quote: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the workspace's script keeps current: the model's status and lock, the captions and their
    flags, the pairs and whether a training can start (polled; also the answer of every bulk write)."""
    model.refresh_from_db(fields=["status", "trigger_word", "parameters", "type", "latest_task"])
    images = dataset_images(model) if images is None else images
    flags = image_problems(model, images) if flags is None else flags
    task = model.latest_task if task is None else task
    if quote is None:
        try:
            quote = training_quote(model=model)
        except ApplicationError:
            quote = None
    low, high = image_count_bounds(model)
    return {
        **live_state(model, task),
        "can_start": bool(quote and quote["canStart"]),
        "start_problems": [problem["detail"] for problem in quote["problems"]] if quote else [],
        "start_notes": list(quote["notes"]) if quote else [],
        "count": len(images),
        "bounds": [low, high],
        "images": [
            {
                "pk": image.pk,
                "id": image.public_id,
                "name": image.name,
                "width": image.asset.width,
                "height": image.asset.height,
                "description": image.description,
                "automatic_captioning": image.automatic_captioning,
                "problems": flags[image.pk],
                "thumbnail": thumbnail_url(model, image),
                "full": media_url(image.asset.file, absolute=False),
            }
            for image in images
        ],
        "pairs": [
            {
                "source_id": pair.source.public_id,
                "target_id": pair.target.public_id,
                "instruction": pair.instruction,
                "extra_source_ids": pair.extra_source_public_ids,
            }
            for pair in selectors.pair_list(model=model)
        ],
        "captions": caption_tools(model, images),
    }


def workspace_context(model: Model) -> dict[str, Any]:
    """Everything the model page shows about its dataset and its next training."""
    images = dataset_images(model)
    low, high = image_count_bounds(model)
    flags = image_problems(model, images)
    cards = [
        {
            "image": image,
            "asset": image.asset,
            "problems": flags[image.pk],
            "thumbnail": thumbnail_url(model, image),
            "full": media_url(image.asset.file, absolute=False),
        }
        for image in images
    ]
    try:
        quote: dict[str, Any] | None = training_quote(model=model)
        quote_error = ""
    except ApplicationError as exc:
        quote, quote_error = None, exc.message
    count = len(images)
    task = model.latest_task
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
        "live": live_state(model, task),
        "captions": caption_tools(model, images),
        "state_json": workspace_state(model, images=images, flags=flags, task=task, quote=quote),
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
    image = scoped_image(model, image_pk)
    text = request.POST.get("description", "")

    def work() -> dict[str, Any]:
        saved = training_image_set_caption(training_image=image, description=text)
        state = workspace_state(model)
        # The image's flags as they are now ("no caption" goes once one is written), and the rest of the
        # page that follows from a caption (the trigger-word tool's count).
        problems = next(entry["problems"] for entry in state["images"] if entry["pk"] == saved.pk)
        return {"description": saved.description, "problems": problems, "state": state}

    return answer(work)


def delete_image(request: HttpRequest, pk: int, image_pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="change_trainingimage")
    image = scoped_image(model, image_pk)
    return answer(lambda: training_image_delete(training_image=image))


def replace_image(request: HttpRequest, pk: int, image_pk: int) -> JsonResponse:
    model = scoped_model(request, pk, permission="change_trainingimage")
    image = scoped_image(model, image_pk)
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
        saved = pairs_replace(model=model, pairs=pairs)
        return {"count": len(saved), "pairs": workspace_state(model)["pairs"]}

    return answer(work)


def state(request: HttpRequest, pk: int) -> JsonResponse:
    """What the workspace polls: see workspace_state."""
    return JsonResponse(workspace_state(scoped_model(request, pk)))


def thumbnail(request: HttpRequest, pk: int, image_pk: int) -> HttpResponse:
    """The image's thumbnail, made now if it has none yet, by a redirect to its signed URL."""
    model = scoped_model(request, pk)
    image = scoped_image(model, image_pk)
    try:
        asset = asset_thumbnail_ensure(asset=image.asset)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # its file gone or unreadable
        return JsonResponse({"detail": f"no thumbnail of {image.name}: {exc}"}, status=404)
    return HttpResponseRedirect(media_url(asset.thumbnail, absolute=False))


def captions_add_trigger(request: HttpRequest, pk: int) -> JsonResponse:
    """Put the trigger word in front of every caption that lacks it; `preview=1` only counts them."""
    model = scoped_model(request, pk, permission="change_trainingimage")
    preview = request.POST.get("preview") == "1"

    def work() -> dict[str, Any]:
        images = training_images_captions_add_trigger(model=model, dry_run=preview)
        return {"changed": len(images), "preview": preview, "state": workspace_state(model)}

    return answer(work)


def captions_replace(request: HttpRequest, pk: int) -> JsonResponse:
    """Find and replace across the captions: `preview=1` counts, then the same with `expected` writes."""
    model = scoped_model(request, pk, permission="change_trainingimage")
    preview = request.POST.get("preview") == "1"

    def work() -> dict[str, Any]:
        expected_text = request.POST.get("expected", "")
        if expected_text and not expected_text.isdigit():
            raise InvalidInput("expected must be the number of captions the preview counted", field="expected")
        result = training_images_captions_replace(
            model=model,
            find=request.POST.get("find", ""),
            replace=request.POST.get("replace", ""),
            dry_run=preview,
            expected=int(expected_text) if expected_text else None,
        )
        return {
            "changed": len(result.images),
            "occurrences": result.occurrences,
            "preview": preview,
            "state": workspace_state(model),
        }

    return answer(work)


def autocaption(request: HttpRequest, pk: int) -> JsonResponse:
    """Queue automatic captions of every image (where a captioning model is configured)."""
    model = scoped_model(request, pk, permission="change_trainingimage")
    return answer(lambda: {"queued": training_images_autocaption(model=model)})


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
