import pytest
from django.db import IntegrityError, transaction

from models_app.errors import Conflict, InvalidInput, LimitReached
from models_app.models import TASK_TRANSITIONS, Model, TrainingTask
from models_app.services.datasets import model_configure, training_image_set_caption
from models_app.services.training import training_cancel, training_start
from models_app.services.worker_protocol import training_task_claim, training_task_fail
from tests.factories import ModelFactory, TeamFactory, add_images

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready_model(tiny_sd15) -> Model:
    model = ModelFactory()
    add_images(model, 12)
    return model


@pytest.mark.parametrize("count", [11, 21])
def test_start_outside_the_image_bounds_is_refused_naming_count_and_bounds(count: int, tiny_sd15) -> None:
    model = ModelFactory()
    add_images(model, count)
    with pytest.raises(InvalidInput) as raised:
        training_start(model=model)
    assert raised.value.message == f"the model has {count} training images; training needs between 12 and 20"
    assert raised.value.extra == {"count": count, "min": 12, "max": 20}
    assert TrainingTask.objects.count() == 0
    model.refresh_from_db()
    assert model.status == Model.Status.NEW


def test_start_queues_a_task_with_every_seed_default_and_the_model_parameters(ready_model: Model) -> None:
    model_configure(model=ready_model, parameters={"steps": 30, "rank": 8})
    task = training_start(model=ready_model)
    ready_model.refresh_from_db()
    assert ready_model.status == Model.Status.QUEUED
    assert task.status == TrainingTask.Status.PENDING
    assert (task.steps, task.total_steps, task.rank) == (30, 30, 8)
    # Seed 003's documented defaults for what the model did not set.
    assert (task.learning_rate, task.batch_size, task.save_every, task.max_step_saves_to_keep) == (0.0001, 1, 2000, 4)
    assert (task.optimizer, task.sample_every, task.sample_steps, task.priority) == ("adamw8bit", 250, 25, 1)
    assert task.preprocessing_captioning_strategy == "trigger_only"
    assert task.origin_instance == "unknown"
    assert task.trigger_word == "zxq"
    assert task.model_id == ready_model.uuid  # seed 003's entity_id
    assert task.source_images == list(ready_model.training_images.values_list("asset__public_id", flat=True))


def test_a_second_start_of_a_model_in_training_is_refused(ready_model: Model) -> None:
    training_start(model=ready_model)
    with pytest.raises(Conflict, match="Model is already training"):
        training_start(model=ready_model)
    assert TrainingTask.objects.filter(model=ready_model).count() == 1


def test_the_database_refuses_two_live_tasks_for_one_model(ready_model: Model) -> None:
    first = training_start(model=ready_model)
    duplicate = TrainingTask(team=first.team, model=ready_model, trigger_word="zxq")
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()


def test_the_dataset_is_locked_while_training(ready_model: Model) -> None:
    training_start(model=ready_model)
    image = ready_model.training_images.first()
    with pytest.raises(Conflict, match="cannot change until training ends"):
        training_image_set_caption(training_image=image, description="new words")


def test_team_limit_of_parallel_trainings(tiny_sd15) -> None:
    team = TeamFactory(max_parallel_trainings=1)
    first, second = ModelFactory(team=team), ModelFactory(team=team)
    add_images(first, 12)
    add_images(second, 12)
    training_start(model=first)
    with pytest.raises(LimitReached) as raised:
        training_start(model=second)
    assert raised.value.status_code == 429
    assert raised.value.extra == {"actionName": "parallel-training", "actionLimit": 1}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"stepz": 10}, "unknown parameter 'stepz'"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"steps": "many"}, "steps must be an integer, got str"),
        ({"learning_rate": True}, "learning_rate must be a number, not a boolean"),
        ({"optimizer": "sgd"}, "optimizer must be one of adamw8bit, adamw"),
    ],
)
def test_bad_parameters_are_refused_with_the_field_named(ready_model: Model, parameters: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as raised:
        model_configure(model=ready_model, parameters=parameters)
    assert raised.value.field == f"parameters.{next(iter(parameters))}"
    ready_model.refresh_from_db()
    assert ready_model.parameters == {}


def test_a_base_model_outside_the_model_roots_is_refused(ready_model: Model, tmp_path) -> None:
    with pytest.raises(InvalidInput, match="outside the model folders this server reads"):
        training_start(model=ready_model, overrides={"base_model_path": str(tmp_path)})
    with pytest.raises(InvalidInput, match="neither a model folder nor an owner/name hub id"):
        training_start(model=ready_model, overrides={"base_model_path": "not a model"})
    assert TrainingTask.objects.count() == 0


def test_a_task_is_claimed_once(ready_model: Model) -> None:
    task = training_start(model=ready_model)
    claimed = training_task_claim(task_id=str(task.pk), worker_id="worker-a")
    assert claimed is not None and claimed.attempt_count == 1 and claimed.status == TrainingTask.Status.PREPROCESSING
    assert training_task_claim(task_id=str(task.pk), worker_id="worker-b") is None
    ready_model.refresh_from_db()
    assert ready_model.status == Model.Status.TRAINING


def test_cancel_of_a_queued_task_is_immediate_and_it_cannot_be_claimed(ready_model: Model) -> None:
    task = training_start(model=ready_model)
    cancelled = training_cancel(model=ready_model)
    assert cancelled.status == TrainingTask.Status.CANCELLED
    ready_model.refresh_from_db()
    assert ready_model.status == Model.Status.CANCELED
    assert training_task_claim(task_id=str(task.pk), worker_id="late-worker") is None


def test_cancel_of_a_running_task_sets_the_flag_the_runner_reads(ready_model: Model) -> None:
    task = training_start(model=ready_model)
    training_task_claim(task_id=str(task.pk), worker_id="w")
    cancelled = training_cancel(model=ready_model)
    assert cancelled.status == TrainingTask.Status.PREPROCESSING
    assert cancelled.cancel_requested_at is not None


def test_cancel_without_a_training_is_a_conflict(ready_model: Model) -> None:
    with pytest.raises(Conflict, match="has no training to cancel"):
        training_cancel(model=ready_model)


def test_finished_tasks_never_move_again(ready_model: Model) -> None:
    task = training_start(model=ready_model)
    training_task_claim(task_id=str(task.pk), worker_id="w")
    assert training_task_fail(task_id=task.pk, worker_id="w", message="boom")
    assert not training_task_fail(task_id=task.pk, worker_id="w", message="again")
    for final in (TrainingTask.Status.COMPLETED, TrainingTask.Status.FAILED, TrainingTask.Status.CANCELLED):
        assert TASK_TRANSITIONS[final] == frozenset()
    task.refresh_from_db()
    assert task.error_message == "boom"
    ready_model.refresh_from_db()
    assert ready_model.status == Model.Status.FAILED


def test_pairs_are_replaced_whole_and_must_name_this_models_images(ready_model: Model) -> None:
    from models_app.services.datasets import pairs_replace

    first, second, third = (image.public_id for image in ready_model.training_images.select_related("asset")[:3])
    pairs_replace(model=ready_model, pairs=[{"source_id": first, "target_id": second, "instruction": "a"}])
    created = pairs_replace(
        model=ready_model,
        pairs=[
            {"sourceId": second, "targetId": third, "instruction": "b"},
            {"source_id": third, "target_id": first},
        ],
    )
    assert [(p.source.public_id, p.target.public_id, p.instruction) for p in created] == [
        (second, third, "b"),
        (third, first, ""),
    ]
    assert ready_model.pairs.count() == 2

    foreign = ModelFactory()
    add_images(foreign, 1, seed=5)
    stranger = foreign.training_images.select_related("asset").get().public_id
    with pytest.raises(InvalidInput, match=r"pairs\[0\].target_id .* is not a training image of model"):
        pairs_replace(model=ready_model, pairs=[{"source_id": first, "target_id": stranger}])
    with pytest.raises(InvalidInput, match="source and target must be different images"):
        pairs_replace(model=ready_model, pairs=[{"source_id": first, "target_id": first}])
    assert ready_model.pairs.count() == 2  # a refused replacement leaves the old pairs


def test_a_pair_may_carry_further_sources_each_checked_and_a_deleted_one_takes_its_pair_along(
    ready_model: Model,
) -> None:
    from models_app import selectors
    from models_app.services.datasets import pairs_replace, training_image_delete

    images = list(ready_model.training_images.select_related("asset")[:6])
    a, b, c, d, e, f = (image.public_id for image in images)
    pairs_replace(
        model=ready_model,
        pairs=[
            {"source_id": a, "target_id": b, "instruction": "swap", "extra_source_ids": [c, d]},
            {"sourceId": e, "targetId": f, "extraSourceIds": []},
        ],
    )
    listed = list(selectors.pair_list(model=ready_model))
    assert [[x.image.public_id for x in pair.extra_sources.all()] for pair in listed] == [[c, d], []]
    refusals = [
        ({"source_id": a, "target_id": b, "extra_source_ids": [b]}, "none the target"),
        ({"source_id": a, "target_id": b, "extra_source_ids": [a]}, "each source must be a different image"),
        ({"source_id": a, "target_id": b, "extra_source_ids": [c, d, e, f]}, "a list of at most 3"),
        ({"source_id": a, "target_id": b, "extra_source_ids": "c"}, "a list of at most 3"),
        ({"source_id": a, "target_id": b, "extra_source_ids": ["nope"]}, r"extra_source_ids\[0\] 'nope' is not a"),
        ({"source_id": a, "target_id": b, "evil": 1}, r"pairs\[0\].evil is not a pair field"),
    ]
    for pair, message in refusals:
        with pytest.raises(InvalidInput, match=message):
            pairs_replace(model=ready_model, pairs=[pair])
    assert ready_model.pairs.count() == 2  # every refusal left the pairs as they were

    training_image_delete(training_image=images[3])  # d, a further source of the first pair
    assert [(p.source.public_id, p.target.public_id) for p in selectors.pair_list(model=ready_model)] == [(e, f)]


def test_start_rules_know_which_families_learn_edits(tiny_models: dict, ready_model: Model) -> None:
    from contract.families import edit_families
    from models_app.services.datasets import pairs_replace
    from models_app.services.training import training_quote

    a, b, c, d = (image.public_id for image in ready_model.training_images.select_related("asset")[:4])
    # A text-to-image model on a family that learns only edits is refused, naming why.
    model_configure(model=ready_model, parameters={"base_model_path": str(tiny_models["flux-kontext"])})
    with pytest.raises(InvalidInput, match=r"FLUX\.1 Kontext learns edits only: train it as an edit model"):
        training_start(model=ready_model)
    # Its pairs are not trained, and the quote says so before the start.
    model_configure(model=ready_model, parameters={"base_model_path": str(tiny_models["flux2-klein"])})
    pairs_replace(model=ready_model, pairs=[{"source_id": a, "target_id": b}, {"source_id": c, "target_id": d}])
    quote = training_quote(model=ready_model)
    assert quote["canStart"] and quote["notes"][0] == (
        "the model's before/after pairs are not trained: a subject model learns text to image from its images and "
        "captions; set its type to edit to train an edit model from its pairs"
    )

    # An edit model on a family that cannot edit: a 400 naming those that can.
    Model.objects.filter(pk=ready_model.pk).update(type=Model.Type.EDIT)
    ready_model.refresh_from_db()
    model_configure(model=ready_model, parameters={"base_model_path": str(tiny_models["sd3"])})
    with pytest.raises(InvalidInput) as raised:
        training_start(model=ready_model)
    assert raised.value.field == "base_model_path"
    assert all(facts.label in raised.value.message for facts in edit_families())
    # More sources than the family conditions on: Kontext takes one reference image, FLUX.2 up to four.
    pairs_replace(model=ready_model, pairs=[{"source_id": a, "target_id": b, "extra_source_ids": [c]},
                                            {"source_id": c, "target_id": d}])  # fmt: skip
    model_configure(model=ready_model, parameters={"base_model_path": str(tiny_models["flux-kontext"])})
    with pytest.raises(InvalidInput, match=r"pairs\[0\] has 2 source images; FLUX.1 Kontext conditions on at most 1"):
        training_start(model=ready_model)
    model_configure(model=ready_model, parameters={"base_model_path": str(tiny_models["flux2-klein"])})
    assert training_quote(model=ready_model)["canStart"]


def test_captions_the_strategy_will_not_read_are_noted_at_the_quote_and_in_the_task_log(
    ready_model: Model, tmp_path
) -> None:
    """Seed 003's default strategy (trigger_only) trains on the trigger word alone: a dataset whose captions
    would go unread says so before the start and in the training's log, and not once they are read."""
    from models_app.services.training import training_quote
    from training.reporting import TaskReporter
    from training.runner import build_spec

    note = (
        "12 of the model's images have captions that this training does not read: captioning strategy "
        "trigger_only (seed 003's default) trains every image on the trigger word alone; set "
        "preprocessing_captioning_strategy to description to train on the captions"
    )
    assert training_quote(model=ready_model)["notes"] == [note]
    task = training_task_claim(task_id=str(training_start(model=ready_model).pk), worker_id="test-worker")
    assert task is not None
    reporter = TaskReporter(task, "test-worker")
    build_spec(task, tmp_path, reporter)
    reporter.flush(force=True)
    task.refresh_from_db()
    assert note in task.logs

    training_cancel(model=ready_model)
    model_configure(model=ready_model, parameters={"preprocessing_captioning_strategy": "description"})
    assert training_quote(model=ready_model)["notes"] == []
