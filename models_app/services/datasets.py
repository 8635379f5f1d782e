"""Models and their datasets: create, configure, add and caption images, replace pairs."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from contract.captions import has_trigger, trigger_prefixed
from contract.families import max_pair_sources
from models_app.errors import Conflict, InvalidInput, NotFound
from models_app.input_rules import (
    CAPTION_MAX,
    DESCRIPTION_MAX,
    INSTRUCTION_MAX,
    NAME_MAX,
    TRIGGER_WORD_MAX,
    text_check,
)
from models_app.models import Asset, Model, Pair, PairSource, Project, Team, TrainingImage
from models_app.services.assets import asset_create, image_verify
from models_app.services.image_sources import ImageSource
from models_app.services.queue import queue_send
from models_app.training_parameters import validate_parameters

# While a training reads the dataset, it must not change under it.
LOCKED_STATUSES = (Model.Status.QUEUED, Model.Status.TRAINING)


def _lock_editable(model_id: int) -> Model:
    """The model row, locked for this transaction and read fresh, if its dataset may change now."""
    model = Model.objects.select_for_update().get(pk=model_id)
    ensure_editable(model)
    return model


def ensure_editable(model: Model) -> None:
    """Conflict unless the model's dataset may change now (not deleted, not queued or training)."""
    if model.status == Model.Status.DELETED:
        raise Conflict(f"model {model.public_id} is deleted")
    if model.status in LOCKED_STATUSES:
        raise Conflict(f"model {model.public_id} is {model.status}; its dataset cannot change until training ends")


def _name_check(name: object) -> str:
    name = text_check(name if name is not None else "", field="name", max_length=NAME_MAX).strip()
    if not name:
        raise InvalidInput("name is required", field="name")
    return name


def _trigger_word_check(trigger_word: object) -> str:
    return text_check(trigger_word, field="trigger_word", max_length=TRIGGER_WORD_MAX).strip()


def _description_check(short_description: object) -> str:
    return text_check(short_description, field="shortDescription", max_length=DESCRIPTION_MAX, multiline=True)


def _type_check(type: str) -> str:  # noqa: A002 - the API's own field name
    if type not in Model.Type.values:
        raise InvalidInput(f"type must be one of {', '.join(Model.Type.values)}; got {type!r}", field="type")
    return type


def _project_check(project: Project | None, *, team_id: int) -> Project | None:
    if project is not None and project.team_id != team_id:
        raise InvalidInput("the project belongs to another team", field="projectId")
    return project


@transaction.atomic
def model_create(
    *,
    team: Team,
    name: str,
    type: str = Model.Type.SUBJECT,  # noqa: A002 - the API's own field name
    trigger_word: str = "",
    short_description: str = "",
    parameters: dict[str, Any] | None = None,
    project: Project | None = None,
) -> Model:
    name = _name_check(name)
    trigger_word = _trigger_word_check(trigger_word)
    short_description = _description_check(short_description)
    _type_check(type)
    _project_check(project, team_id=team.id)
    clean = validate_parameters(parameters or {})
    return Model.objects.create(
        team=team,
        project=project,
        name=name,
        type=type,
        trigger_word=trigger_word,
        short_description=short_description,
        parameters=clean,
    )


@transaction.atomic
def model_update(
    *,
    model: Model,
    name: str,
    type: str,  # noqa: A002 - the API's own field name
    project: Project | None,
    trigger_word: str,
    short_description: str,
    parameters: dict[str, Any] | None = None,
) -> Model:
    """Set a model's own fields at once (the admin's model form). A model queued or training is locked
    like its dataset (`ensure_editable`). Its team is not among the fields: a model, its dataset and
    its trainings stay in the team that created them. `parameters`, when given, replace the stored
    overrides as a whole (validated as the API validates them); a parameter left out is the default."""
    model = _lock_editable(model.pk)
    model.name = _name_check(name)
    model.type = _type_check(type)
    model.project = _project_check(project, team_id=model.team_id)
    model.trigger_word = _trigger_word_check(trigger_word)
    model.short_description = _description_check(short_description)
    fields = ["name", "type", "project", "trigger_word", "short_description", "updated_at"]
    if parameters is not None:
        model.parameters = validate_parameters(parameters)
        fields.append("parameters")
    model.save(update_fields=fields)
    return model


@transaction.atomic
def model_configure(
    *,
    model: Model,
    parameters: dict[str, Any] | None = None,
    name: str | None = None,
    short_description: str | None = None,
    trigger_word: str | None = None,
    replace: bool = False,
) -> Model:
    """Merge (or, with replace, swap in) parameter overrides and change the descriptive fields."""
    model = Model.objects.select_for_update().get(pk=model.pk)
    if model.status == Model.Status.DELETED:
        raise Conflict(f"model {model.public_id} is deleted")
    fields = ["updated_at"]
    if parameters is not None:
        clean = validate_parameters(parameters)
        model.parameters = clean if replace else {**model.parameters, **clean}
        fields.append("parameters")
    if name is not None:
        model.name = _name_check(name)
        fields.append("name")
    if short_description is not None:
        model.short_description = _description_check(short_description)
        fields.append("short_description")
    if trigger_word is not None:
        model.trigger_word = _trigger_word_check(trigger_word)
        fields.append("trigger_word")
    model.save(update_fields=fields)
    return model


def training_image_add(*, model: Model, content: bytes, name: str, description: str = "") -> TrainingImage:
    """Store an uploaded image as an asset of the model's team and add it to the dataset."""
    source = ImageSource(name=name, content=content)
    [image] = training_images_add(model=model, sources=[source], descriptions=[description], field="file")
    return image


def images_per_call_check(count: int, *, field: str) -> None:
    """One call of the REST API (`assetIds`) or of the `train` tool (`images`) adds at most IMAGES_PER_CALL_MAX
    images: each may be a download or a copy to verify, and a call answers within a request's time."""
    if count > settings.IMAGES_PER_CALL_MAX:
        raise InvalidInput(
            f"{field} has {count} entries; at most {settings.IMAGES_PER_CALL_MAX} images may be added in one call",
            field=field,
        )


def training_images_add(
    *, model: Model, sources: Sequence[ImageSource], descriptions: Sequence[str] | None = None, field: str = "images"
) -> list[TrainingImage]:
    """Add several images at once: all are verified first, and either all are added or none is."""
    ensure_editable(model)
    descriptions = [caption_check(text) for text in (descriptions or [""] * len(sources))]
    item_fields = [field if len(sources) == 1 else f"{field}[{index}]" for index in range(len(sources))]
    for source, item_field in zip(sources, item_fields, strict=True):
        if source.content is not None:
            image_verify(content=source.content, name=source.name, field=item_field)
        if source.sidecar_caption:
            caption_check(source.sidecar_caption, field=f"{item_field} (the caption file beside {source.name})")
    created_assets: list[Asset] = []
    try:
        with transaction.atomic():
            images = []
            for index, source in enumerate(sources):
                asset = source.asset
                if asset is None:
                    asset = asset_create(
                        team=model.team,
                        project=model.project,
                        content=source.content or b"",
                        name=source.name,
                        field=item_fields[index],
                    )
                    created_assets.append(asset)
                image = training_image_add_asset(model=model, asset=asset, description=descriptions[index])
                if source.sidecar_caption:
                    image.sidecar_caption = source.sidecar_caption
                    image.save(update_fields=["sidecar_caption"])
                images.append(image)
            return images
    except BaseException:
        # The rows went with the rollback; the files the storage already holds must go too.
        for asset in created_assets:
            asset.file.delete(save=False)
        raise


def training_image_replace(
    *, training_image: TrainingImage, content: bytes | None = None, name: str = "", description: str | None = None
) -> TrainingImage:
    """Swap the image file (it becomes a new asset, so the image's id changes) and/or its caption.

    All or nothing: a refused image (unreadable, too small, a locked dataset) leaves neither a new
    asset row nor its file behind.
    """
    model = training_image.model
    ensure_editable(model)
    if content is None and description is None:
        raise InvalidInput("send a new file, a new description, or both", field="file")
    if description is not None:
        description = caption_check(description)
    name = name or "image"
    # Decoded before any lock is taken; refused before anything is written.
    verified = image_verify(content=content, name=name) if content is not None else None
    if verified is not None:
        _check_training_size(name=name, width=verified.width, height=verified.height)
    new_asset = None
    try:
        with transaction.atomic():
            _lock_editable(model.pk)
            current = _locked_image(training_image)
            if content is not None:
                new_asset = asset_create(
                    team=model.team, project=model.project, content=content, name=name, verified=verified
                )
                current.asset = new_asset
                current.name = new_asset.original_name
            if description is not None:
                current.description = description.strip()
            current.save(update_fields=["asset", "name", "description"])
            return current
    except BaseException:
        # The asset row went with the rollback; its file must go too.
        if new_asset is not None:
            new_asset.file.delete(save=False)
        raise


def caption_check(description: object, *, field: str = "description") -> str:
    """A training image's caption: a string of at most CAPTION_MAX characters, line breaks allowed."""
    return text_check(description, field=field, max_length=CAPTION_MAX, multiline=True)


def _check_training_size(*, name: str, width: int, height: int) -> None:
    if min(width, height) < settings.IMAGE_MIN_SIDE:
        raise InvalidInput(
            f"{name!r} is {width}x{height} pixels; each side of a training image "
            f"must be at least {settings.IMAGE_MIN_SIDE} pixels",
            field="file",
        )


@transaction.atomic
def training_image_add_asset(*, model: Model, asset: Asset, description: str = "") -> TrainingImage:
    model = _lock_editable(model.pk)
    if asset.team_id != model.team_id:
        raise InvalidInput(f"asset {asset.public_id} not found", field="assetId")
    _check_training_size(name=asset.original_name, width=asset.width, height=asset.height)
    if TrainingImage.objects.filter(model=model, asset=asset).exists():
        raise Conflict(f"asset {asset.public_id} is already a training image of this model")
    return TrainingImage.objects.create(model=model, asset=asset, name=asset.original_name, description=description)


def _locked_image(training_image: TrainingImage) -> TrainingImage:
    """The image's row as it is now, read after its model's lock (which every dataset write takes first,
    so nothing changes it until this transaction ends). A row deleted meanwhile is a 404: saving the
    stale instance read before the lock would insert it again, resurrecting a deleted image."""
    current = TrainingImage.objects.filter(pk=training_image.pk, model_id=training_image.model_id).first()
    if current is None:
        raise NotFound(f"training image {training_image.name or training_image.pk} no longer exists")
    return current


@transaction.atomic
def training_image_set_caption(*, training_image: TrainingImage, description: str) -> TrainingImage:
    description = caption_check(description)
    _lock_editable(training_image.model_id)
    current = _locked_image(training_image)
    current.description = description.strip()
    current.save(update_fields=["description"])
    return current


@transaction.atomic
def training_image_delete(*, training_image: TrainingImage) -> None:
    """Delete the image, and with it every pair it is in: as source or target (the database cascades) or as a
    further source, so no pair is left meaning something else than it was given as."""
    _lock_editable(training_image.model_id)
    current = _locked_image(training_image)
    Pair.objects.filter(extra_sources__image=current).delete()
    current.delete()


# A pair's fields, each in the seed's snake_case and in camelCase; anything else is refused, not dropped.
PAIR_FIELDS = frozenset({"source_id", "sourceId", "target_id", "targetId", "instruction", "extra_source_ids",
                         "extraSourceIds"})  # fmt: skip


@transaction.atomic
def pairs_replace(*, model: Model, pairs: Sequence[dict[str, Any]]) -> list[Pair]:
    """Swap the model's pairs for the given ones; every id must be a training image of this model.

    A pair may name further sources (`extra_source_ids`, beyond seed 004's one `source_id`) for the families
    whose pipelines condition on several reference images; the start checks the count against the family."""
    model = _lock_editable(model.pk)
    by_public_id = {image.asset.public_id: image for image in model.training_images.select_related("asset")}
    most_extra = max_pair_sources() - 1
    created: list[tuple[Pair, list[TrainingImage]]] = []
    seen: dict[tuple[str, ...], int] = {}
    for position, entry in enumerate(pairs):
        field = f"pairs[{position}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{field} must be an object with source_id, target_id and instruction", field=field)
        unknown = sorted(set(entry) - PAIR_FIELDS)
        if unknown:
            raise InvalidInput(
                f"{field}.{unknown[0]} is not a pair field; a pair has source_id, target_id, instruction and "
                "extra_source_ids",
                field=f"{field}.{unknown[0]}",
            )
        ids: list[str] = []
        for key, camel_key in (("source_id", "sourceId"), ("target_id", "targetId")):
            value = entry.get(key, entry.get(camel_key))
            if not isinstance(value, str) or value not in by_public_id:
                raise InvalidInput(
                    f"{field}.{key} {value!r} is not a training image of model {model.public_id}",
                    field=f"{field}.{key}",
                )
            ids.append(value)
        source_id, target_id = ids
        extra_ids = entry.get("extra_source_ids", entry.get("extraSourceIds")) or []
        if not isinstance(extra_ids, list | tuple) or len(extra_ids) > most_extra:
            raise InvalidInput(
                f"{field}.extra_source_ids must be a list of at most {most_extra} training image ids",
                field=f"{field}.extra_source_ids",
            )
        for number, value in enumerate(extra_ids):
            if not isinstance(value, str) or value not in by_public_id:
                raise InvalidInput(
                    f"{field}.extra_source_ids[{number}] {value!r} is not a training image of model {model.public_id}",
                    field=f"{field}.extra_source_ids",
                )
        instruction = entry.get("instruction") or ""
        if source_id == target_id:
            raise InvalidInput(f"{field}: source and target must be different images", field=field)
        sources = [source_id, *extra_ids]
        if target_id in extra_ids or len(set(sources)) < len(sources):
            raise InvalidInput(
                f"{field}: each source must be a different image, and none the target",
                field=f"{field}.extra_source_ids",
            )
        text_check(instruction, field=f"{field}.instruction", max_length=INSTRUCTION_MAX, multiline=True)
        identity = (*sources, target_id)
        if identity in seen:
            raise InvalidInput(
                f"{field} repeats pairs[{seen[identity]}] ({', '.join(sources)} -> {target_id}); each pair may be given once",
                field=field,
            )
        seen[identity] = position
        pair = Pair(
            model=model,
            source=by_public_id[source_id],
            target=by_public_id[target_id],
            instruction=instruction,
            position=position,
        )
        created.append((pair, [by_public_id[value] for value in extra_ids]))
    Pair.objects.filter(model=model).delete()
    saved = Pair.objects.bulk_create([pair for pair, _ in created])
    PairSource.objects.bulk_create(
        PairSource(pair=pair, image=image, position=number)
        for pair, (_, extra) in zip(saved, created, strict=True)
        for number, image in enumerate(extra, start=1)
    )
    return saved


def model_delete(*, model: Model) -> Model:
    """Soft delete: the model answers `deleted` and leaves every list; a live training is cancelled first."""
    from models_app.services.training import training_cancel

    if model.status in LOCKED_STATUSES:
        with contextlib.suppress(Conflict):  # it may have finished meanwhile
            training_cancel(model=model)
    with transaction.atomic():
        model = Model.objects.select_for_update().get(pk=model.pk)
        if model.status != Model.Status.DELETED:
            model.status = Model.Status.DELETED
            model.deleted_at = timezone.now()
            model.save(update_fields=["status", "deleted_at", "updated_at"])
    return model


# --- captions in bulk: the workspace's caption tools and the automatic captioner --------------------


@transaction.atomic
def training_images_captions_bulk(*, model: Model, captions: Mapping[str, str]) -> list[TrainingImage]:
    """Set several captions at once, keyed by training image id (`asset_…`). Every caption is checked
    before anything is written, and all are written in one transaction or none is: an unknown id, a bad
    caption or a model queued or training (409) leaves every caption as it was. Returns the images whose
    caption changed."""
    model = _lock_editable(model.pk)
    images = {image.public_id: image for image in model.training_images.select_related("asset")}
    new: dict[str, str] = {}
    for image_id, text in captions.items():
        field = f"captions.{image_id}"
        if image_id not in images:
            raise InvalidInput(f"{image_id!r} is not a training image of model {model.public_id}", field=field)
        new[image_id] = caption_check(text, field=field).strip()
    changed = [image for image_id, image in images.items() if image_id in new and image.description != new[image_id]]
    for image in changed:
        image.description = new[image.public_id]
    TrainingImage.objects.bulk_update(changed, ["description"])
    return changed


@transaction.atomic
def training_images_captions_add_trigger(*, model: Model, dry_run: bool = False) -> list[TrainingImage]:
    """Put the model's trigger word in front of every caption that lacks it, by the rule the engine
    applies when it trains (contract/captions.py), so the stored captions say what will be trained on.
    Empty captions are left for someone to write. With `dry_run`, the images it would change, unchanged."""
    locked = _lock_editable(model.pk)
    trigger_word = locked.trigger_word
    if not trigger_word:
        raise InvalidInput(f"model {locked.public_id} has no trigger word; set one first", field="trigger_word")
    lacking = [
        image
        for image in locked.training_images.select_related("asset")
        if image.description.strip() and not has_trigger(image.description, trigger_word)
    ]
    if dry_run:
        return lacking
    edits = {image.public_id: trigger_prefixed(image.description.strip(), trigger_word) for image in lacking}
    return training_images_captions_bulk(model=locked, captions=edits)


@dataclass(frozen=True)
class CaptionsReplaced:
    images: list[TrainingImage]  # the images whose caption changes (changed, unless a dry run)
    occurrences: int


@transaction.atomic
def training_images_captions_replace(
    *, model: Model, find: str, replace: str, dry_run: bool = False, expected: int | None = None
) -> CaptionsReplaced:
    """Replace every occurrence of `find` (exact text, case included) by `replace` in the model's
    captions. A `dry_run` counts the captions and occurrences and writes nothing: the preview. With
    `expected`, the count the preview showed: if the captions changed since (someone else edited
    them), nothing is written and the conflict says so."""
    find = text_check(find, field="find", max_length=CAPTION_MAX)
    replace = text_check(replace, field="replace", max_length=CAPTION_MAX)
    if not find:
        raise InvalidInput("write the text to find", field="find")
    locked = _lock_editable(model.pk)
    matching = [image for image in locked.training_images.select_related("asset") if find in image.description]
    occurrences = sum(image.description.count(find) for image in matching)
    if expected is not None and expected != len(matching):
        raise Conflict(
            f"the captions changed since the preview: {len(matching)} caption(s) would change now, "
            f"not {expected}; preview again",
            field="find",
        )
    if dry_run:
        return CaptionsReplaced(images=matching, occurrences=occurrences)
    edits = {image.public_id: image.description.replace(find, replace) for image in matching}
    training_images_captions_bulk(model=locked, captions=edits)
    return CaptionsReplaced(images=matching, occurrences=occurrences)


AUTOCAPTION_TASK = "training.tasks.caption_images"


def autocaption_unavailable() -> str:
    """Why this server cannot caption images automatically, or "" when it can."""
    if not settings.TRAINING_CAPTION_MODEL:
        return "no captioning model is configured on this server (set TRAINING_CAPTION_MODEL)"
    return ""


@transaction.atomic
def training_images_autocaption(*, model: Model) -> int:
    """Queue the automatic captioning of every image of the model on the training workers (which hold
    the captioning model, TRAINING_CAPTION_MODEL); their captions arrive through
    `training_images_automatic_captions_store`. Returns the number of images to caption."""
    locked = _lock_editable(model.pk)
    if reason := autocaption_unavailable():
        raise Conflict(f"automatic captions are not available: {reason}")
    count = locked.training_images.count()
    if not count:
        raise InvalidInput(f"model {locked.public_id} has no images to caption", field="images")
    model_id = locked.pk
    transaction.on_commit(
        lambda: queue_send(
            AUTOCAPTION_TASK, model_id, queue=settings.TRAINING_QUEUE, task_name=f"captions {locked.public_id}"
        )
    )
    return count


@transaction.atomic
def training_images_automatic_captions_store(*, model: Model, captions: Mapping[str, str]) -> list[TrainingImage]:
    """The captioning model's captions, by training image id: each kept as the image's automatic caption
    and written as its caption where it has none (a caption someone wrote is never overwritten). An image
    deleted while it was being captioned is skipped; a model queued or training meanwhile refuses all
    (409). Returns the images whose caption was filled."""
    locked = _lock_editable(model.pk)
    images = {image.public_id: image for image in locked.training_images.select_related("asset")}
    automatic = {
        image_id: caption_check(text, field=f"captions.{image_id}").strip()
        for image_id, text in captions.items()
        if image_id in images
    }
    for image_id, text in automatic.items():
        images[image_id].automatic_captioning = text
    TrainingImage.objects.bulk_update([images[image_id] for image_id in automatic], ["automatic_captioning"])
    fills = {
        image_id: text for image_id, text in automatic.items() if text and not images[image_id].description.strip()
    }
    return training_images_captions_bulk(model=locked, captions=fills)
