"""Training, the user's side: the start rules and quotes, starting, cancelling and re-prioritising.

The worker's side (claim, progress, completion, failure, the reaper) is
`models_app/services/worker_protocol.py`; both move a task's status through
`models_app/services/task_states.py`, and store files through `models_app/services/task_files.py`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from contract.families import FamilyFacts, edit_families, family_facts
from contract.parameters import GPUS_AND_SWAP, global_batch_problem
from models_app.errors import ApplicationError, Conflict, InsufficientCredits, InvalidInput, LimitReached, NotFound
from models_app.models import (
    Model,
    Team,
    TrainingTask,
)
from models_app.services.credits import Estimate, credits_reserve, training_estimate
from models_app.services.machines import largest_machine_gpus
from models_app.services.task_states import task_rows_lock, task_transition
from models_app.services.webhooks import webhook_emit
from models_app.services.worker_protocol import training_task_enqueue
from models_app.training_parameters import effective_parameters, validate_parameters

logger = logging.getLogger(__name__)

MIN_PAIRS = 2
# Parameters the engine takes that seed 003's task has no column for, kept in `training_options`.
# The runner hands each one that names a TrainingSpec field to the engine under that name.
ENGINE_OPTIONS = (
    "lr_scheduler",
    "lr_warmup_steps",
    "caption_dropout_rate",
    "gradient_checkpointing",
    "guidance_scale",
    "compile",
    "quantize_base",
    "swap_blocks",
    "mixed_precision",
    "lora_type",
    "lora_targets",
    "lora_dropout",
    "repeats",
    "loss_type",
    "huber_delta",
    "min_snr_gamma",
    "noise_offset",
    "timestep_sampling",
    "logit_mean",
    "logit_std",
    "sigmoid_scale",
    "timestep_shift",
    "ema",
    "ema_decay",
    "ema_start_step",
    "train_text_encoder",
    "text_encoder_learning_rate",
    "prior_preservation_class",
    "prior_preservation_weight",
    "masked_loss",
    "validation_split",
    "validation_images",  # not a spec field: the runner marks these images `validation`
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def image_count_bounds(model: Model) -> tuple[int, int]:
    low, high = settings.TRAINING_IMAGE_COUNT_BOUNDS
    return int(low), int(high)


def base_model_resolve(value: str) -> str:
    """A local diffusers folder inside the configured roots, or a hub id; InvalidInput otherwise."""
    field = "base_model_path"
    value = (value or "").strip()
    if not value:
        raise InvalidInput("base_model_path is empty", field=field)
    roots = [Path(root).resolve() for root in settings.TRAINING_BASE_MODEL_ROOTS]
    candidate = Path(value).expanduser()
    looks_like_path = (
        candidate.is_absolute() or value.startswith((".", "~")) or any((root / value).exists() for root in roots)
    )
    if looks_like_path:
        resolved = (candidate if candidate.is_absolute() else _first_existing(roots, value)).resolve()
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise InvalidInput(
                f"base_model_path {value!r} is outside the model folders this server reads "
                f"({', '.join(str(r) for r in roots)})",
                field=field,
            )
        if not (resolved / "model_index.json").is_file():
            raise InvalidInput(
                f"base_model_path {value!r} is not a diffusers model folder (no model_index.json)", field=field
            )
        return str(resolved)
    if HUB_ID.match(value):
        if not settings.TRAINING_ALLOW_HUB_MODELS:
            raise InvalidInput(
                f"base_model_path {value!r} is a hub id, and this server only trains from local model folders",
                field=field,
            )
        return value
    raise InvalidInput(f"base_model_path {value!r} is neither a model folder nor an owner/name hub id", field=field)


def _first_existing(roots: list[Path], relative: str) -> Path:
    for root in roots:
        if (root / relative).exists():
            return root / relative
    return roots[0] / relative


def team_training_limit(team: Team) -> int | None:
    if team.max_parallel_trainings is not None:
        return team.max_parallel_trainings
    return settings.TRAINING_MAX_PARALLEL_PER_TEAM or None


def team_active_trainings(team_id: int) -> int:
    return TrainingTask.objects.filter(team_id=team_id, status__in=TrainingTask.ACTIVE_STATUSES).count()


@dataclass(frozen=True)
class TrainingPlan:
    """What a start would do: the merged parameters, the base model, the estimate, and why it may not."""

    parameters: dict[str, Any]
    base_model: str
    estimate: Estimate
    problems: list[ApplicationError]
    notes: list[str]  # what the start will do that the caller may not expect


# A model that is not an edit model trains text to image; its pairs, if it has any, stay unread.
PAIRS_NOT_TRAINED = (
    "the model's before/after pairs are not trained: a {kind} model learns text to image from its images and "
    "captions; set its type to edit to train an edit model from its pairs"
)

# Seed 003's default strategy trains every image on the trigger word alone: captions written for a model
# under it are kept but not read, which a user who wrote them would not guess.
CAPTIONS_NOT_USED = (
    "{count} of the model's images have captions that this training does not read: captioning strategy "
    "trigger_only (seed 003's default) trains every image on the trigger word alone; set "
    "preprocessing_captioning_strategy to description to train on the captions"
)


def captions_not_used(model: Model, strategy: str) -> str | None:
    """The note for captions the strategy will not read, or None."""
    if model.type == Model.Type.EDIT or strategy != "trigger_only":
        return None
    count = model.training_images.exclude(description="").count()
    return CAPTIONS_NOT_USED.format(count=count) if count else None


def _plan(model: Model, overrides: dict[str, Any] | None) -> TrainingPlan:
    # The stored parameters are checked again with the overrides: a rule added since they were stored
    # (a length limit, say) answers a 400 naming them, not a failure later.
    clean = validate_parameters({**model.parameters, **(overrides or {})})
    params = effective_parameters(clean, default_base_model=settings.TRAINING_DEFAULT_BASE_MODEL)
    base_model = base_model_resolve(params["base_model_path"])
    estimate = training_estimate(
        base_model=base_model,
        steps=params["steps"],
        batch_size=params["batch_size"],
        gradient_accumulation=params["gradient_accumulation"],
        resolution=params["resolution"],
    )
    problems: list[ApplicationError] = []
    notes: list[str] = []
    if model.status == Model.Status.DELETED:
        problems.append(NotFound(f"model {model.public_id} not found"))
    if TrainingTask.objects.filter(model=model, status__in=TrainingTask.ACTIVE_STATUSES).exists():
        problems.append(Conflict("Model is already training"))
    if model.type == Model.Type.EDIT:
        pairs = model.pairs.count()
        if pairs < MIN_PAIRS:
            problems.append(
                InvalidInput(
                    f"the model has {pairs} before/after pairs; an edit model needs at least {MIN_PAIRS}",
                    field="pairs",
                    extra={"count": pairs, "min": MIN_PAIRS},
                )
            )
        editing = edit_families()
        if estimate.family not in {facts.key for facts in editing}:
            labels = ", ".join(facts.label for facts in editing)
            problems.append(
                InvalidInput(
                    f"an edit model trains on a base model of a family that learns edits ({labels}); "
                    f"{base_model!r} is {family_facts(estimate.family).label}",
                    field="base_model_path",
                )
            )
        else:
            problems.extend(_pair_sources_problems(model, family_facts(estimate.family)))
    elif family_facts(estimate.family).needs_pairs:
        problems.append(
            InvalidInput(
                f"{family_facts(estimate.family).label} learns edits only: train it as an edit model (type edit) "
                f"from before/after pairs, or pick a text-to-image base model",
                field="base_model_path",
            )
        )
    else:
        count = model.training_images.count()
        low, high = image_count_bounds(model)
        if not low <= count <= high:
            problems.append(
                InvalidInput(
                    f"the model has {count} training images; training needs between {low} and {high}",
                    field="training_images",
                    extra={"count": count, "min": low, "max": high},
                )
            )
    if model.type != Model.Type.EDIT and model.pairs.exists():
        notes.append(PAIRS_NOT_TRAINED.format(kind=model.type))
    if note := captions_not_used(model, params["preprocessing_captioning_strategy"]):
        notes.append(note)
    problems.extend(_validation_images_problems(model, params["validation_images"]))
    problems.extend(_gpus_problems(params))
    limit = team_training_limit(model.team)
    if limit is not None and team_active_trainings(model.team_id) >= limit:
        problems.append(
            LimitReached(
                f"the team already has {limit} trainings queued or running, its limit",
                extra={"actionName": "parallel-training", "actionLimit": limit},
            )
        )
    balance = model.team.credit_balance
    if balance is not None and balance < estimate.credits:
        problems.append(
            InsufficientCredits(
                f"this training is estimated at {estimate.credits} credits and the team has {balance}",
                extra={"estimate": estimate.as_dict(), "balance": str(balance)},
            )
        )
    return TrainingPlan(parameters=params, base_model=base_model, estimate=estimate, problems=problems, notes=notes)


def _pair_sources_problems(model: Model, facts: FamilyFacts) -> list[ApplicationError]:
    """Each pair's sources (its source and any further ones) must fit what the family's pipeline conditions on."""
    counts = model.pairs.annotate(extra=Count("extra_sources")).values_list("position", "extra")
    for position, extra in counts:
        if 1 + extra > facts.max_sources:
            return [
                InvalidInput(
                    f"pairs[{position}] has {1 + extra} source images; {facts.label} conditions on at most "
                    f"{facts.max_sources}",
                    field="pairs",
                )
            ]
    return []


def _gpus_problems(params: dict[str, Any]) -> list[ApplicationError]:
    """A task runs on `gpus` devices of one machine: refused when no machine has that many (it would
    wait forever) and when its global batch cannot be split evenly over them."""
    gpus, field = params["gpus"], "parameters.gpus"
    most = largest_machine_gpus()
    if gpus > most:
        return [
            InvalidInput(
                f"gpus {gpus}: no worker machine has that many GPUs (the largest has {most})",
                field=field,
                extra={"requested": gpus, "largest_machine": most},
            )
        ]
    problem = global_batch_problem(gpus, params["batch_size"], params["gradient_accumulation"])
    if not problem and gpus > 1 and params["swap_blocks"]:
        problem = GPUS_AND_SWAP
    return [InvalidInput(problem, field=field)] if problem else []


def _validation_images_problems(model: Model, held_out: list[str]) -> list[ApplicationError]:
    """validation_images must name this model's training images and leave at least one to train on."""
    if not held_out:
        return []
    field = "parameters.validation_images"
    own = set(model.training_images.values_list("asset__public_id", flat=True))
    for asset_id in held_out:
        if asset_id not in own:
            return [
                InvalidInput(
                    f"validation_images names {asset_id}, which is not a training image of model {model.public_id}",
                    field=field,
                )
            ]
    if len(own) - len(set(held_out)) < 1:
        return [
            InvalidInput(
                f"validation_images holds out all {len(own)} training images; at least one must be left to train on",
                field=field,
            )
        ]
    return []


def training_quote(*, model: Model, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dry run of a start: its estimate and whether it would be accepted, with nothing written."""
    model = Model.objects.select_related("team").get(pk=model.pk)
    plan = _plan(model, overrides)
    balance = model.team.credit_balance
    return {
        "dryRun": True,
        "estimate": plan.estimate.as_dict(),
        "balance": None if balance is None else str(balance),
        "canStart": not plan.problems,
        "problems": [{"detail": p.message, "status": p.status_code} for p in plan.problems],
        "notes": plan.notes,
        "parameters": plan.parameters,
    }


@transaction.atomic
def training_start(
    *,
    model: Model,
    overrides: dict[str, Any] | None = None,
    origin: dict[str, str | None] | None = None,
) -> TrainingTask:
    """Queue a training of the model's current dataset with its parameters (and these overrides)."""
    model = Model.objects.select_for_update().get(pk=model.pk)  # LOCK ORDER: model, team, task
    model.team = Team.objects.select_for_update().get(pk=model.team_id)
    plan = _plan(model, overrides)
    if plan.problems:
        raise plan.problems[0]
    params = plan.parameters
    trigger_word = model.trigger_word or _default_trigger_word(model)
    source_images = list(model.training_images.select_related("asset").values_list("asset__public_id", flat=True))

    task = TrainingTask(
        team=model.team,
        model=model,
        trigger_word=trigger_word,
        entity_type=model.type.upper(),
        training_type=params["training_type"],
        rank=params["rank"],
        lora_alpha=params["lora_alpha"],
        steps=params["steps"],
        total_steps=params["steps"],
        learning_rate=params["learning_rate"],
        batch_size=params["batch_size"],
        gradient_accumulation=params["gradient_accumulation"],
        gpus=params["gpus"],
        optimizer=params["optimizer"],
        resolution=params["resolution"],
        seed=params["seed"],
        save_every=params["save_every"],
        max_step_saves_to_keep=params["max_step_saves_to_keep"],
        sample_every=params["sample_every"],
        sample_steps=params["sample_steps"],
        sample_prompts=params["sample_prompts"],
        base_model_path=plan.base_model,
        bypass_guidance_embedding=params["bypass_guidance_embedding"],
        preprocessing_transforms=params["preprocessing_transforms"],
        preprocessing_captioning_strategy=params["preprocessing_captioning_strategy"],
        preprocessing_captioning_prompt=params["preprocessing_captioning_prompt"],
        priority=params["priority"],
        webhook_url=params["webhook_url"],
        source_images=source_images,
        total_files_count=len(source_images),
        training_options={name: params[name] for name in ENGINE_OPTIONS},
        **{k: v for k, v in (origin or {}).items() if k in ORIGIN_FIELDS and v is not None},
    )
    try:
        with transaction.atomic():
            task.save(force_insert=True)
    except IntegrityError as exc:
        # Another start of the same model won the race: the partial unique index refused this one.
        raise Conflict("Model is already training") from exc
    credits_reserve(team=model.team, task=task, estimate=plan.estimate)
    Model.objects.filter(pk=model.pk).update(status=Model.Status.QUEUED, latest_task=task, updated_at=timezone.now())
    webhook_emit(task_id=task.pk, event="queued")
    transaction.on_commit(lambda: training_task_enqueue(task_id=str(task.id)))
    return task


ORIGIN_FIELDS = ("origin_instance", "origin_zone", "origin_version", "origin_tenant_id")


def _default_trigger_word(model: Model) -> str:
    # A rare token that the base model's vocabulary has no meaning for, derived from the model id.
    return "sks" + model.public_id.split("_", 1)[1][:4].lower()


def training_cancel(*, model: Model) -> TrainingTask:
    """Cancel the model's queued or running training."""
    task = model.training_tasks.filter(status__in=TrainingTask.ACTIVE_STATUSES).order_by("-created_at").first()
    if task is None:
        raise Conflict(f"model {model.public_id} has no training to cancel")
    return training_task_cancel(task=task)


@transaction.atomic
def training_task_cancel(*, task: TrainingTask) -> TrainingTask:
    """A queued task is cancelled at once; a running one is flagged and stops at its runner's next step.

    The flag is durable: no claim clears it, and a task whose worker is lost or hands it back with the
    flag set ends CANCELLED (unrun steps refunded) instead of going back to the queue.
    """
    task_rows_lock(task.pk)
    task = TrainingTask.objects.select_for_update().get(pk=task.pk)
    if task.status not in TrainingTask.ACTIVE_STATUSES:
        raise Conflict(f"training task {task.pk} is {task.status} and cannot be cancelled")
    now = timezone.now()
    if task.status == TrainingTask.Status.PENDING and task_transition(
        task.pk,
        TrainingTask.Status.CANCELLED,
        expected=(TrainingTask.Status.PENDING,),
        fields={"completed_at": now, "cancel_requested_at": now},
    ):
        task.refresh_from_db()
        return task
    TrainingTask.objects.filter(pk=task.pk, cancel_requested_at__isnull=True).update(cancel_requested_at=now)
    task.refresh_from_db()
    return task


@transaction.atomic
def training_task_set_priority(*, task: TrainingTask, priority: int) -> TrainingTask:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 3:
        raise InvalidInput("priority must be 0 (low), 1 (normal), 2 (high) or 3 (urgent)", field="priority")
    task = TrainingTask.objects.select_for_update().get(pk=task.pk)
    if task.status != TrainingTask.Status.PENDING:
        raise Conflict(f"training task {task.pk} is {task.status}; only a queued task's priority can change")
    if task.priority != priority:
        task.priority = priority
        task.priority_changed_at = timezone.now()
        task.save(update_fields=["priority", "priority_changed_at", "updated_at"])
    return task
