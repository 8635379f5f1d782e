"""Credits: what a training is estimated to cost, reserved when it starts, refunded for what it did not do.

A team with no balance (`credit_balance` empty) is unlimited and gets no ledger entries. Every change
of a balance is one conditional UPDATE plus one ledger row in the same transaction, so concurrent
starts can never take a balance below zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from decimal import ROUND_UP, Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F

from contract.families import (
    UnknownBaseModel,
    detect_family,
    family_facts,
    guess_family_from_name,
    local_native_resolution,
)
from models_app import selectors
from models_app.errors import InsufficientCredits, InvalidInput
from models_app.models import CreditEntry, Team, TrainingTask

CENT = Decimal("0.01")


@dataclass(frozen=True)
class Estimate:
    family: str
    steps: int
    batch_size: int
    resolution: int
    credits: Decimal
    estimated_seconds: int
    # What estimated_seconds assumes: the workers' measured rate for this base model when one exists,
    # else the family's reference rate on a data-centre GPU (not this machine's CPU).
    seconds_basis: str = ""

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["credits"] = str(self.credits)
        return values


def family_of(base_model: str) -> str:
    if Path(base_model).is_dir():
        try:
            return detect_family(base_model)
        except UnknownBaseModel as exc:
            raise InvalidInput(str(exc), field="base_model_path") from exc
    return guess_family_from_name(base_model)


def training_side(*, base_model: str, resolution: int | None, family: str | None = None) -> int:
    """The side in pixels a training of this base model runs at: `resolution` when set, else the base model's
    own size read from a local folder's configs (a small test base is 64 px, not its family's 512), else the
    family's. The estimate and the dataset's size flags both ask here."""
    family = family or family_of(base_model)
    return resolution or local_native_resolution(base_model, family) or family_facts(family).native_resolution


def training_estimate(
    *, base_model: str, steps: int, batch_size: int, gradient_accumulation: int, resolution: int | None
) -> Estimate:
    """The one cost function: start, `dryRun` and the admin all quote this."""
    family = family_of(base_model)
    # Each family's cost weight and reference speed are facts of its record (contract/families.py).
    facts = family_facts(family)
    native = facts.native_resolution
    size = training_side(base_model=base_model, family=family, resolution=resolution)
    samples = steps * batch_size * gradient_accumulation
    pixel_factor = Decimal(size * size) / Decimal(native * native)
    units = Decimal(samples) * pixel_factor * facts.cost_weight
    amount = (units / 1000 * Decimal(str(settings.CREDITS_PER_1000_STEPS))).quantize(CENT, rounding=ROUND_UP)
    measured = selectors.training_measured_seconds_per_unit(base_model=base_model, native_resolution=native)
    if measured is not None:
        rate, runs, workers = measured
        basis = (
            f"measured: {rate:.3g} s per step at {native} px, batch 1 (median of the last {runs} completed "
            f"training(s) of this base model, on {workers})"
        )
    else:
        rate = facts.seconds_per_step
        basis = (
            f"reference: {rate} s per step at {native} px, batch 1, for {family} on one data-centre GPU "
            "(H100 class); no training of this base model has completed here yet, and a CPU is far slower"
        )
    seconds = math.ceil(samples * float(pixel_factor) * rate)
    return Estimate(
        family=family,
        steps=steps,
        batch_size=batch_size,
        resolution=size,
        credits=max(amount, CENT),
        estimated_seconds=seconds,
        seconds_basis=basis,
    )


def credits_reserve(*, team: Team, task: TrainingTask, estimate: Estimate) -> None:
    """Take the estimate from the team's balance for this task, or raise 402 leaving everything as it was."""
    if team.credit_balance is None:
        return
    with transaction.atomic():
        taken = Team.objects.filter(pk=team.pk, credit_balance__gte=estimate.credits).update(
            credit_balance=F("credit_balance") - estimate.credits
        )
        if not taken:
            balance = Team.objects.values_list("credit_balance", flat=True).get(pk=team.pk)
            raise InsufficientCredits(
                f"this training is estimated at {estimate.credits} credits and the team has {balance}",
                extra={"estimate": estimate.as_dict(), "balance": str(balance)},
            )
        balance = _ledger_balance(team.pk)
        CreditEntry.objects.create(
            team=team,
            task=task,
            kind=CreditEntry.Kind.RESERVE,
            amount=-estimate.credits,
            balance_after=balance,
            note=f"{estimate.steps} steps, {estimate.family}, {estimate.resolution}px",
        )


def _ledger_balance(team_id: int) -> Decimal:
    """The team's balance after a change the ledger records: only a team with a balance has entries."""
    balance = Team.objects.values_list("credit_balance", flat=True).get(pk=team_id)
    if balance is None:
        raise ValueError(f"team {team_id} has a ledger entry but no balance")
    return balance


def credits_settle(*, task_id: Any) -> Decimal:
    """Give back the part of a finished task's reservation it did not use. Safe to call more than once."""
    with transaction.atomic():
        reserve = CreditEntry.objects.filter(task_id=task_id, kind=CreditEntry.Kind.RESERVE).first()
        if reserve is None or CreditEntry.objects.filter(task_id=task_id, kind=CreditEntry.Kind.REFUND).exists():
            return Decimal(0)
        task = TrainingTask.objects.only("status", "current_step", "total_steps").get(pk=task_id)
        done = task.total_steps if task.status == TrainingTask.Status.COMPLETED else task.current_step
        unused = Decimal(max(0, task.total_steps - done)) / Decimal(max(1, task.total_steps))
        refund = (-reserve.amount * unused).quantize(CENT)
        if refund <= 0:
            return Decimal(0)
        Team.objects.filter(pk=reserve.team_id).update(credit_balance=F("credit_balance") + refund)
        balance = _ledger_balance(reserve.team_id)
        CreditEntry.objects.create(
            team_id=reserve.team_id,
            task_id=task_id,
            kind=CreditEntry.Kind.REFUND,
            amount=refund,
            balance_after=balance,
            note=f"{done} of {task.total_steps} steps done",
        )
        return refund


@transaction.atomic
def credits_grant(*, team: Team, amount: Decimal, note: str = "") -> Team:
    """Add credits (a team with no balance starts counting from zero)."""
    if amount <= 0:
        raise InvalidInput("a grant must be a positive number of credits", field="amount")
    team = Team.objects.select_for_update().get(pk=team.pk)
    team.credit_balance = (team.credit_balance or Decimal(0)) + amount
    team.save(update_fields=["credit_balance"])
    CreditEntry.objects.create(
        team=team, kind=CreditEntry.Kind.GRANT, amount=amount, balance_after=team.credit_balance, note=note
    )
    return team
