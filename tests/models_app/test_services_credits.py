from decimal import Decimal

import pytest

from models_app.errors import InsufficientCredits
from models_app.models import CreditEntry, Team, TrainingTask
from models_app.services.credits import credits_grant, training_estimate
from models_app.services.datasets import model_configure
from models_app.services.training import training_cancel, training_quote, training_start
from models_app.services.worker_protocol import training_task_claim
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import api_client_for

pytestmark = pytest.mark.django_db


def test_the_estimate_scales_with_steps_batch_and_resolution(tiny_sd15) -> None:
    base = training_estimate(
        base_model=str(tiny_sd15), steps=1000, batch_size=1, gradient_accumulation=1, resolution=512
    )
    assert (base.family, base.credits) == ("sd15", Decimal("10.00"))
    assert training_estimate(
        base_model=str(tiny_sd15), steps=2000, batch_size=2, gradient_accumulation=1, resolution=512
    ).credits == Decimal("40.00")
    assert training_estimate(
        base_model=str(tiny_sd15), steps=1000, batch_size=1, gradient_accumulation=1, resolution=1024
    ).credits == Decimal("40.00")
    flux = training_estimate(
        base_model="black-forest-labs/FLUX.1-dev", steps=1000, batch_size=1, gradient_accumulation=1, resolution=None
    )
    assert (flux.family, flux.resolution, flux.credits) == ("flux", 1024, Decimal("80.00"))


def test_a_start_beyond_the_balance_is_402_and_changes_nothing(tiny_sd15) -> None:
    team = TeamFactory(credit_balance=Decimal("1.00"))
    model = ModelFactory(team=team, parameters={"steps": 1000, "resolution": 512})
    add_images(model, 12)
    quote = training_quote(model=model)
    assert quote["canStart"] is False and quote["estimate"]["credits"] == "10.00"
    assert quote["problems"] == [
        {"detail": "this training is estimated at 10.00 credits and the team has 1.00", "status": 402}
    ]
    response = api_client_for(team).get(f"/v1/models/{model.public_id}/train")
    assert response.status_code == 402
    assert response.json()["estimate"]["credits"] == "10.00" and response.json()["balance"] == "1.00"
    assert TrainingTask.objects.count() == 0 and CreditEntry.objects.count() == 0


def test_credits_are_reserved_at_start_and_the_unused_part_refunded(tiny_sd15) -> None:
    team = TeamFactory()
    credits_grant(team=team, amount=Decimal("25"), note="welcome")
    model = ModelFactory(team=team, parameters={"steps": 1000, "resolution": 512})
    add_images(model, 12)
    task = training_start(model=model)
    team.refresh_from_db()
    assert team.credit_balance == Decimal("15.00")
    training_task_claim(task_id=str(task.pk), worker_id="w")
    TrainingTask.objects.filter(pk=task.pk).update(current_step=250, status="TRAINING")
    training_cancel(model=model)
    from models_app.services.worker_protocol import training_task_cancelled

    assert training_task_cancelled(task_id=task.pk, worker_id="w")
    team.refresh_from_db()
    assert team.credit_balance == Decimal("22.50")  # 750 of 1000 steps not done: 7.50 back
    kinds = list(CreditEntry.objects.filter(team=team).order_by("id").values_list("kind", "amount", "balance_after"))
    assert kinds == [
        ("grant", Decimal("25.00"), Decimal("25.00")),
        ("reserve", Decimal("-10.00"), Decimal("15.00")),
        ("refund", Decimal("7.50"), Decimal("22.50")),
    ]


def test_a_queued_cancel_refunds_everything_once(tiny_sd15) -> None:
    team = TeamFactory(credit_balance=Decimal("10.00"))
    model = ModelFactory(team=team, parameters={"steps": 100, "resolution": 512})
    add_images(model, 12)
    training_start(model=model)
    assert Team.objects.get(pk=team.pk).credit_balance == Decimal("9.00")
    training_cancel(model=model)
    assert Team.objects.get(pk=team.pk).credit_balance == Decimal("10.00")
    with pytest.raises(InsufficientCredits):
        Team.objects.filter(pk=team.pk).update(credit_balance=Decimal("0.50"))
        training_start(model=model)


@pytest.mark.slow
def test_the_time_estimate_says_what_it_assumes_and_uses_the_workers_measured_rate(tiny_sd15, fast_training) -> None:
    from training.runner import run_training_task

    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, "base_model_path": str(tiny_sd15)})
    reference = training_quote(model=model)["estimate"]
    assert reference["seconds_basis"].startswith("reference:") and "GPU" in reference["seconds_basis"]

    task = training_start(model=model)
    assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
    task.refresh_from_db()
    measured = training_quote(model=model)["estimate"]
    assert measured["seconds_basis"].startswith("measured:") and "last 1 completed" in measured["seconds_basis"]
    assert "(CPU)" in measured["seconds_basis"]  # where the figure was measured: this worker ran on the CPU
    # The same run again is estimated at what this one took.
    assert abs(measured["estimated_seconds"] - task.stage_seconds["training"]) <= 1
    doubled = training_quote(model=model, overrides={"steps": 2 * task.steps})["estimate"]
    assert abs(doubled["estimated_seconds"] - 2 * task.stage_seconds["training"]) <= 1


def test_the_ledger_note_names_the_resolution_the_run_will_use(tiny_sd15) -> None:
    from contract.families import local_native_resolution

    team = TeamFactory(credit_balance=Decimal("100.00"))
    model = ModelFactory(team=team, parameters={"steps": 100})  # no resolution: the base model's own size
    add_images(model, 12)
    task = training_start(model=model)
    native = local_native_resolution(str(tiny_sd15), "sd15")
    assert native is not None and native < 512  # a small test base, not its family's 512 px
    reserve = CreditEntry.objects.get(task=task, kind=CreditEntry.Kind.RESERVE)
    assert reserve.note == f"100 steps, sd15, {native}px"
    assert training_quote(model=model)["estimate"]["resolution"] == native
