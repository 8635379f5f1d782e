import pytest
from django.contrib import admin
from django.urls import reverse

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
    TrainingImage,
    TrainingSample,
    TrainingTask,
)
from models_app.services.accounts import api_key_create
from models_app.services.datasets import pairs_replace
from models_app.services.training import training_start
from tests.factories import MembershipFactory, ModelFactory, ProjectFactory, UserFactory, add_images

pytestmark = pytest.mark.django_db

DOMAIN = [Team, Project, Membership, ApiKey, Asset, Model, TrainingImage, Pair, TrainingTask]
LEDGERS = [TrainingSample, CreditEntry, GenerationJob]


@pytest.fixture
def staff_client(client, tiny_sd15):
    admin_user = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(admin_user)
    model = ModelFactory()
    add_images(model, 12)
    images = list(model.training_images.select_related("asset"))
    pairs_replace(
        model=model,
        pairs=[{"source_id": images[0].public_id, "target_id": images[1].public_id, "instruction": "make it blue"}],
    )
    ProjectFactory(team=model.team)
    MembershipFactory(team=model.team)
    api_key_create(team=model.team, name="ci")
    training_start(model=model)
    return client


def test_every_domain_model_is_registered() -> None:
    for model in DOMAIN + LEDGERS:
        assert admin.site.is_registered(model), model.__name__


@pytest.mark.parametrize("model", DOMAIN, ids=lambda m: m.__name__)
def test_list_and_change_pages_render(staff_client, model) -> None:
    opts = model._meta
    listing = staff_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert listing.status_code == 200
    obj = model.objects.first()
    change = staff_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
    assert change.status_code == 200


def test_a_models_page_shows_its_training_images_as_thumbnails(staff_client) -> None:
    model = Model.objects.get()
    page = staff_client.get(reverse("admin:models_app_model_change", args=[model.pk])).content.decode()
    for image in model.training_images.select_related("asset"):
        # A thumbnail made on first view (services/thumbnails.py), never the original scaled down.
        thumbnail = reverse("admin:models_app_model_thumbnail", args=[model.pk, image.pk])
        assert f'src="{thumbnail}"' in page and f'src="{image.asset.file.url}' not in page
        made = staff_client.get(thumbnail)["Location"]
        # Signed: the media view serves no bare path (models_app/media_access.py).
        assert made.startswith("/media/thumbnails/") and "?token=" in made
    assert page.count("<img ") >= 12


@pytest.mark.parametrize("model", LEDGERS, ids=lambda m: m.__name__)
def test_ledger_list_pages_render(staff_client, model) -> None:
    opts = model._meta
    assert staff_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")).status_code == 200
