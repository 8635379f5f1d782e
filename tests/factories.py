"""Factories for the domain rows. Images are real PNG files drawn with Pillow."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from factory.django import DjangoModelFactory

from models_app.models import Membership, Model, Project, Team
from models_app.services.accounts import api_key_create, api_key_token
from models_app.services.datasets import training_image_add
from training.engine.testing.images import make_images


class UserFactory(DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")


class TeamFactory(DjangoModelFactory):
    class Meta:
        model = Team

    name = factory.Sequence(lambda n: f"Team {n}")


class ProjectFactory(DjangoModelFactory):
    class Meta:
        model = Project

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"Project {n}")


class MembershipFactory(DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.OWNER


class ModelFactory(DjangoModelFactory):
    class Meta:
        model = Model

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"Model {n}")
    trigger_word = "zxq"
    parameters = factory.LazyFunction(dict)


def add_images(model: Model, count: int, *, seed: int = 0) -> None:
    """Add `count` real generated images (with captions) through the service the API uses."""
    for image in make_images(count, seed=seed, trigger_word=model.trigger_word):
        training_image_add(model=model, content=image.content, name=image.name, description=image.caption)


def api_token(team: Team) -> str:
    api_key, secret = api_key_create(team=team, name="test")
    return api_key_token(api_key, secret)
