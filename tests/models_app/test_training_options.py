"""The engine options beyond seed 003's fields: validated by the one table, stored at start, and the
worker's crash-safety snapshots kept apart from the user's checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse

from models_app.errors import InvalidInput
from models_app.models import Model, TrainingCheckpoint, TrainingTask
from models_app.services.datasets import model_configure
from models_app.services.task_files import training_checkpoint_record
from models_app.services.training import ENGINE_OPTIONS, training_quote, training_start
from models_app.training_parameters import PARAMETERS, dependent_defaults, effective_parameters
from tests.factories import ModelFactory, add_images
from tests.helpers import api_client_for
from training.engine.checkpoints import FILES
from training.engine.spec import TrainingSpec

pytestmark = pytest.mark.django_db

# A valid, non-default value for every option the engine gained; each differs from its default.
NEW_OPTIONS = {
    "mixed_precision": "no",
    "lora_type": "dora",
    "lora_targets": "all_linear+conv",
    "lora_dropout": 0.1,
    "repeats": 3,
    "loss_type": "huber",
    "huber_delta": 0.5,
    "min_snr_gamma": 5,
    "noise_offset": 0.05,
    "timestep_sampling": "sigmoid",
    "logit_mean": -0.5,
    "logit_std": 1.5,
    "sigmoid_scale": 2.0,
    "timestep_shift": 3.0,
    "ema": True,
    "ema_decay": 0.99,
    "ema_start_step": 10,
    "train_text_encoder": True,
    "text_encoder_learning_rate": 5e-5,
    "prior_preservation_class": "person",
    "prior_preservation_weight": 0.5,
    "masked_loss": True,
    "validation_split": 0.2,
    "quantize_base": "nf4",
    "swap_blocks": 4,
}


@pytest.fixture
def ready_model(tiny_sd15) -> Model:
    model = ModelFactory()
    add_images(model, 12)
    return model


def image_ids(model: Model) -> list[str]:
    return list(model.training_images.values_list("asset__public_id", flat=True))


def test_every_new_option_is_a_parameter_an_engine_option_and_not_its_default() -> None:
    for name, value in NEW_OPTIONS.items():
        assert name in PARAMETERS and name in ENGINE_OPTIONS, name
        assert PARAMETERS[name].default != value, name
    spec_fields = set(TrainingSpec.__dataclass_fields__)
    # Every engine option reaches the engine under its own name, except the ids the runner turns into flags.
    assert {name for name in ENGINE_OPTIONS if name not in spec_fields} == {"validation_images"}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lora_type", "lycoris", "lora_type must be one of lora, dora, lokr, loha; got 'lycoris'"),
        ("lora_targets", "everything", "lora_targets must be one of attention, all_linear, all_linear+conv"),
        ("lora_dropout", 0.95, "lora_dropout must be at most 0.9; got 0.95"),
        ("lora_dropout", -0.1, "lora_dropout must be at least 0"),
        ("repeats", 0, "repeats must be at least 1; got 0"),
        ("repeats", 101, "repeats must be at most 100"),
        ("repeats", 1.5, "repeats must be an integer, got float"),
        ("loss_type", "l1", "loss_type must be one of mse, huber, smooth_l1"),
        ("huber_delta", 0, "huber_delta must be greater than 0; got 0"),
        ("huber_delta", 10.5, "huber_delta must be at most 10"),
        ("min_snr_gamma", 0.05, "min_snr_gamma must be at least 0.1"),
        ("min_snr_gamma", 51, "min_snr_gamma must be at most 50"),
        ("noise_offset", -0.1, "noise_offset must be at least 0"),
        ("noise_offset", 1.5, "noise_offset must be at most 1"),
        ("timestep_sampling", "cosine", "timestep_sampling must be one of uniform, logit_normal, sigmoid"),
        ("logit_mean", 6, "logit_mean must be at most 5"),
        ("logit_mean", -6, "logit_mean must be at least -5"),
        ("logit_std", 0, "logit_std must be at least 0.01"),
        ("logit_std", 6, "logit_std must be at most 5"),
        ("sigmoid_scale", 0, "sigmoid_scale must be at least 0.01"),
        ("sigmoid_scale", 11, "sigmoid_scale must be at most 10"),
        ("timestep_shift", 0.05, "timestep_shift must be at least 0.1"),
        ("timestep_shift", 25, "timestep_shift must be at most 20"),
        ("timestep_shift", "auto", "timestep_shift must be a number, got str"),
        ("ema", "yes", "ema must be a boolean, got str"),
        ("ema_decay", 0.4, "ema_decay must be at least 0.5"),
        ("ema_decay", 1.0, "ema_decay must be at most 0.99999"),
        ("ema_start_step", -1, "ema_start_step must be at least 0"),
        ("ema_start_step", 100_001, "ema_start_step must be at most 100000"),
        ("train_text_encoder", 1, "train_text_encoder must be a boolean, got int"),
        ("text_encoder_learning_rate", 0, "text_encoder_learning_rate must be at least 1e-07"),
        ("text_encoder_learning_rate", 2, "text_encoder_learning_rate must be at most 1.0"),
        ("text_encoder_learning_rate", True, "text_encoder_learning_rate must be a number, not a boolean"),
        ("prior_preservation_class", "", "prior_preservation_class must be at least 1 character(s) long"),
        ("prior_preservation_class", "x" * 101, "prior_preservation_class must be at most 100 characters long"),
        ("prior_preservation_class", 5, "prior_preservation_class must be a string, got int"),
        ("prior_preservation_weight", -1, "prior_preservation_weight must be at least 0"),
        ("prior_preservation_weight", 11, "prior_preservation_weight must be at most 10"),
        ("masked_loss", "true", "masked_loss must be a boolean, got str"),
        ("validation_split", 0.6, "validation_split must be at most 0.5"),
        ("validation_split", -0.1, "validation_split must be at least 0"),
        ("validation_images", "asset_x", "validation_images must be a list, got str"),
        ("validation_images", ["photo.png"], "validation_images[0] must be a training image id (asset_…)"),
        ("validation_images", ["asset_a", 3], "validation_images[1] must be a training image id"),
        ("validation_images", ["asset_a", "asset_a"], "validation_images lists asset_a more than once"),
        ("mixed_precision", "fp16", "mixed_precision must be one of bf16, no"),
        ("quantize_base", "int4", "quantize_base must be one of fp8, int8, nf4"),
        ("swap_blocks", -1, "swap_blocks must be at least 0"),
        ("swap_blocks", 201, "swap_blocks must be at most 200"),
        ("swap_blocks", 2.5, "swap_blocks must be an integer"),
    ],
)
def test_a_bad_new_option_is_refused_naming_its_key(key: str, value: object, message: str) -> None:
    model = ModelFactory()
    with pytest.raises(InvalidInput) as raised:
        model_configure(model=model, parameters={key: value})
    assert raised.value.status_code == 400
    assert message in raised.value.message
    assert raised.value.field == f"parameters.{key}"
    model.refresh_from_db()
    assert model.parameters == {}


def test_the_api_answers_400_naming_the_key(tiny_sd15) -> None:
    model = ModelFactory()
    response = api_client_for(model.team).patch(
        f"/v1/models/{model.public_id}", {"parameters": {"loss_type": "l1"}}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["field"] == "parameters.loss_type"
    assert response.json()["detail"] == "loss_type must be one of mse, huber, smooth_l1; got 'l1'"


def test_valid_new_options_and_the_nullable_ones_null_are_accepted() -> None:
    model = ModelFactory()
    model_configure(model=model, parameters=NEW_OPTIONS)
    model.refresh_from_db()
    assert model.parameters == NEW_OPTIONS
    nulls = {"min_snr_gamma": None, "timestep_shift": None, "text_encoder_learning_rate": None}
    model_configure(model=model, parameters={**nulls, "prior_preservation_class": None, "huber_delta": 10})
    model.refresh_from_db()
    assert model.parameters["timestep_shift"] is None and model.parameters["huber_delta"] == 10


def test_a_start_stores_every_engine_option_with_the_overrides(ready_model: Model) -> None:
    held_out = image_ids(ready_model)[:2]
    model_configure(model=ready_model, parameters={"lora_type": "lokr", "repeats": 2})
    task = training_start(model=ready_model, overrides={**NEW_OPTIONS, "validation_images": held_out})
    assert set(task.training_options) == set(ENGINE_OPTIONS)
    assert task.training_options == {
        **{name: PARAMETERS[name].default for name in ENGINE_OPTIONS},
        **NEW_OPTIONS,
        "validation_images": held_out,
    }
    task.refresh_from_db()
    assert task.training_options["lora_type"] == "dora"  # the start's override over the model's parameter
    assert task.training_options["validation_images"] == held_out


def test_a_start_without_overrides_stores_the_defaults(ready_model: Model) -> None:
    task = training_start(model=ready_model)
    options = task.training_options
    assert (options["lora_type"], options["lora_targets"], options["loss_type"]) == ("lora", "all_linear", "mse")
    assert (options["timestep_sampling"], options["timestep_shift"], options["min_snr_gamma"]) == (
        "logit_normal",
        None,
        None,
    )
    assert (options["ema"], options["masked_loss"], options["validation_images"]) == (False, False, [])
    assert options["prior_preservation_class"] is None and options["repeats"] == 1


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"optimizer": "prodigy"}, 1.0),  # Prodigy's own step size: the usual setting
        ({"optimizer": "prodigy", "learning_rate": 0.5}, 0.5),  # what the user set stands
        ({"optimizer": "adamw"}, 0.0001),
        ({}, 0.0001),
    ],
)
def test_prodigy_defaults_the_learning_rate_to_one(ready_model: Model, parameters: dict, expected: float) -> None:
    model_configure(model=ready_model, parameters=parameters)
    assert training_quote(model=ready_model)["parameters"]["learning_rate"] == expected
    assert training_start(model=ready_model).learning_rate == expected


def test_prodigy_as_a_start_override_also_gets_its_learning_rate(ready_model: Model) -> None:
    model_configure(model=ready_model, parameters={"learning_rate": 0.002})
    # The model's own learning rate was set by the user: it stands with prodigy too.
    assert training_start(model=ready_model, overrides={"optimizer": "prodigy"}).learning_rate == 0.002


def test_dependent_defaults_are_one_function() -> None:
    assert dependent_defaults({"optimizer": "prodigy", "learning_rate": 1e-4}, given=set()) == {"learning_rate": 1.0}
    assert dependent_defaults({"optimizer": "prodigy", "learning_rate": 1e-4}, given={"learning_rate"}) == {}
    merged = effective_parameters({"optimizer": "prodigy"}, default_base_model="x")
    assert merged["learning_rate"] == 1.0
    merged["validation_images"].append("asset_z")  # a copy: the table's default stays empty
    assert PARAMETERS["validation_images"].default == []


def test_a_validation_image_that_is_not_the_models_is_refused_at_start(ready_model: Model, tiny_sd15) -> None:
    stranger = ModelFactory(team=ready_model.team)
    add_images(stranger, 1, seed=7)
    foreign = image_ids(stranger)[0]
    own = image_ids(ready_model)[0]
    with pytest.raises(InvalidInput) as raised:
        training_start(model=ready_model, overrides={"validation_images": [own, foreign]})
    assert raised.value.status_code == 400
    assert raised.value.message == (
        f"validation_images names {foreign}, which is not a training image of model {ready_model.public_id}"
    )
    assert raised.value.field == "parameters.validation_images"
    assert TrainingTask.objects.count() == 0

    model_configure(model=ready_model, parameters={"validation_images": ["asset_doesnotexist"]})
    response = api_client_for(ready_model.team).get(f"/v1/models/{ready_model.public_id}/train")
    assert response.status_code == 400
    assert "asset_doesnotexist" in response.json()["detail"]
    quote = training_quote(model=ready_model)
    assert quote["canStart"] is False and "asset_doesnotexist" in quote["problems"][0]["detail"]


def test_validation_images_must_leave_an_image_to_train_on(ready_model: Model) -> None:
    with pytest.raises(InvalidInput, match="holds out all 12 training images; at least one must be left"):
        training_start(model=ready_model, overrides={"validation_images": image_ids(ready_model)})
    task = training_start(model=ready_model, overrides={"validation_images": image_ids(ready_model)[:11]})
    assert len(task.training_options["validation_images"]) == 11


# Snapshots: the worker's crash-safety saves beside the user's checkpoints.


def checkpoint_folder(root: Path, name: str, marker: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file_name in FILES:
        (folder / file_name).write_text(f"{marker}:{file_name}")
    return folder


@pytest.fixture
def task(ready_model: Model) -> TrainingTask:
    return training_start(model=ready_model, overrides={"max_step_saves_to_keep": 2})


def stored(task: TrainingTask, *, snapshot: bool) -> list[int]:
    return list(TrainingCheckpoint.objects.filter(task=task, snapshot=snapshot).values_list("step", flat=True))


def test_a_snapshot_is_kept_alone_and_never_prunes_the_users_checkpoints(task: TrainingTask, tmp_path: Path) -> None:
    for step in (100, 200):
        training_checkpoint_record(
            task_id=task.pk, step=step, folder=checkpoint_folder(tmp_path, f"step-{step:07d}", "c"), keep=2
        )
    first = training_checkpoint_record(
        task_id=task.pk, step=250, folder=checkpoint_folder(tmp_path, "snapshot-0000250", "s"), keep=2, snapshot=True
    )
    assert all("/checkpoints/snapshot-0000250/" in name for name in first.files.values())
    second = training_checkpoint_record(
        task_id=task.pk, step=300, folder=checkpoint_folder(tmp_path, "snapshot-0000300", "s"), keep=2, snapshot=True
    )
    assert stored(task, snapshot=True) == [300]
    assert stored(task, snapshot=False) == [200, 100]  # keep=2 and both are still there
    assert not any(default_storage.exists(name) for name in first.files.values())
    assert all(default_storage.exists(name) for name in second.files.values())

    # A user checkpoint at the snapshot's step is its own row; pruning counts only checkpoints.
    training_checkpoint_record(
        task_id=task.pk, step=300, folder=checkpoint_folder(tmp_path, "step-0000300", "c"), keep=2
    )
    assert stored(task, snapshot=False) == [300, 200]
    assert stored(task, snapshot=True) == [300]

    # A resumed run saving the same snapshot step again replaces it and its files.
    again = training_checkpoint_record(
        task_id=task.pk, step=300, folder=checkpoint_folder(tmp_path / "again", "snapshot-0000300", "t"), keep=2,
        snapshot=True,
    )  # fmt: skip
    assert stored(task, snapshot=True) == [300]
    assert not any(default_storage.exists(name) for name in second.files.values())
    assert default_storage.open(again.files["state.json"]).read() == b"t:state.json"


def test_snapshots_are_not_listed_to_users_as_checkpoints(task: TrainingTask, tmp_path: Path, admin_client) -> None:
    training_checkpoint_record(
        task_id=task.pk, step=100, folder=checkpoint_folder(tmp_path, "step-0000100", "c"), keep=2
    )
    training_checkpoint_record(
        task_id=task.pk, step=250, folder=checkpoint_folder(tmp_path, "snapshot-0000250", "s"), keep=2, snapshot=True
    )
    page = admin_client.get(reverse("admin:models_app_trainingtask_change", args=[task.pk])).content.decode()
    assert "checkpoint at step 100" in page
    assert "step 250" not in page and "snapshot-0000250" not in page
    listing = admin_client.get(reverse("admin:models_app_trainingcheckpoint_changelist"))
    assert [(row.step, row.snapshot) for row in listing.context["cl"].result_list] == [(100, False)]


def test_a_worker_killed_while_pruning_never_leaves_more_checkpoints_than_kept(
    task: TrainingTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new checkpoint's row and the pruning of the oldest commit together. A worker killed right after
    (here: the first file deletion fails, as a SIGKILL would stop it) leaves `keep` rows, not one more;
    the pruned checkpoint's files are left unreferenced, for the orphan sweep."""
    from models_app.services import task_files

    for step in (100, 200):
        training_checkpoint_record(
            task_id=task.pk, step=step, folder=checkpoint_folder(tmp_path, f"step-{step:07d}", "c"), keep=2
        )
    oldest = TrainingCheckpoint.objects.get(task=task, step=100)

    def killed(names: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(task_files, "stored_files_delete", killed)
    with pytest.raises(SystemExit):
        training_checkpoint_record(
            task_id=task.pk, step=300, folder=checkpoint_folder(tmp_path, "step-0000300", "c"), keep=2
        )
    assert stored(task, snapshot=False) == [300, 200]
    assert all(default_storage.exists(name) for name in oldest.files.values())  # unreferenced, for the sweep
