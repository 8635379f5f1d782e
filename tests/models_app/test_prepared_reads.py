"""The prepared reads (SQL compiled once per process, run with each read's values) give exactly the rows
the ORM's queryset gives: the same models in the same order, the same fields and columns, the same
serialized output, and the same total; another team's and deleted models stay out."""

from __future__ import annotations

import itertools

import pytest
from django.core.files.base import ContentFile
from django.db.models import QuerySet
from django.test import RequestFactory

from models_app import selectors
from models_app.api.serializers import ModelSerializer
from models_app.errors import NotFound
from models_app.models import Model, Team, TrainingTask
from tests.factories import ModelFactory, ProjectFactory, TeamFactory, add_images

# The serialized models hold signed URLs, whose token carries the second they were signed at: the signer's
# clock is fixed, so two reads a second apart compare equal when their rows do.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fixed_signing_clock")]

REQUEST = RequestFactory().get("/v1/models", HTTP_HOST="localhost")


def shown(models: list[Model]) -> list[dict[str, object]]:
    fields = [field.attname for field in Model._meta.concrete_fields]
    return [
        {**{name: getattr(model, name) for name in fields}, "serialized": ModelSerializer(model, context={"request": REQUEST}).data}
        for model in models
    ]  # fmt: skip


def team_of_every_kind() -> tuple[Team, str]:
    team = TeamFactory()
    project = ProjectFactory(team=team)
    ModelFactory(team=team, type=Model.Type.STYLE)  # nothing else
    with_images = ModelFactory(team=team, project=project, type=Model.Type.PRODUCT)
    add_images(with_images, 3)
    trained = ModelFactory(team=team, project=project, type=Model.Type.PRODUCT)
    done = TrainingTask.objects.create(
        team=team, model=trained, status=TrainingTask.Status.COMPLETED, progress=100.0, loss=0.25
    )
    done.weights.save("weights.safetensors", ContentFile(b"weights"), save=True)
    running = TrainingTask.objects.create(
        team=team, model=trained, status=TrainingTask.Status.PREPROCESSING, preprocessing_stage="captioning",
        progress=12.5, eta_seconds=77, error_message="slow",
    )  # fmt: skip
    Model.objects.filter(pk=trained.pk).update(
        trained_task=done, latest_task=running, status=Model.Status.TRAINING, parameters={"steps": 30}
    )
    ModelFactory(team=team, status=Model.Status.DELETED)
    ModelFactory(team=TeamFactory(), type=Model.Type.PRODUCT)  # another team's
    return team, project.public_id


def test_a_page_of_models_is_what_the_queryset_reads_for_every_filter_and_page() -> None:
    team, project_id = team_of_every_kind()
    seen: set[int] = set()
    values = {"status": [None, "training", "new"], "type": [None, "product"], "project_id": [None, project_id]}
    for (status, kind, project), include_deleted in itertools.product(
        itertools.product(*values.values()), (False, True)
    ):
        filters = {"status": status, "type": kind, "project_id": project, "include_deleted": include_deleted}
        queryset: QuerySet[Model] = selectors.model_list(team=team, **filters).order_by(*selectors.MODEL_LIST_ORDER)
        for offset, limit in ((0, 50), (0, 2), (1, 2), (3, 2), (10, 2)):
            rows, total = selectors.model_page(team=team, offset=offset, limit=limit, **filters)
            assert shown(rows) == shown(list(queryset[offset : offset + limit])), (filters, offset)
            assert total == (queryset.count() if rows else 0), (filters, offset)
            seen.add(len(rows))
    assert seen == {0, 1, 2, 3, 4}  # the filters and pages tried read every size of page
    assert selectors.model_page(team=team, offset=0, limit=50, project_id="project_\x1b") == ([], 0)


def test_a_model_by_id_is_what_the_queryset_reads() -> None:
    team, _ = team_of_every_kind()
    for model in Model.objects.filter(team=team):
        for include_deleted in (False, True):
            expected = list(selectors.model_list(team=team, include_deleted=include_deleted).filter(pk=model.pk))
            try:
                got = [selectors.model_get(team=team, public_id=model.public_id, include_deleted=include_deleted)]
            except NotFound:
                got = []
            assert shown(got) == shown(expected)
            assert len(got) == (0 if model.status == Model.Status.DELETED and not include_deleted else 1)
    elsewhere = Model.objects.exclude(team=team).first()
    with pytest.raises(NotFound):
        selectors.model_get(team=team, public_id=elsewhere.public_id)


def test_a_placeholder_must_be_exactly_one_of_the_compiled_values() -> None:
    models = Model.objects.filter(name="same", short_description="same")
    with pytest.raises(ValueError, match="2 of the compiled parameters"):
        selectors.PreparedRead(models, name="same")
    with pytest.raises(ValueError, match="0 of the compiled parameters"):
        selectors.PreparedRead(models, name="other")
