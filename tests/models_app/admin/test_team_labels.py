"""Two teams may share a name: the admin names a team with its public id everywhere (filters, selects,
columns), and a staff member's team filter offers their own teams only."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from models_app.models import Membership
from models_app.services.accounts import membership_set
from tests.factories import ModelFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_two_teams_named_alike_are_told_apart_in_filters_selects_and_columns(client) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    first, second = TeamFactory(name="Studio"), TeamFactory(name="Studio")
    assert str(first) == f"Studio ({first.public_id})" != str(second)
    ModelFactory(team=first, name="First's model")
    ModelFactory(team=second, name="Second's model")

    for page in ("models_app_model_changelist", "models_app_trainingtask_changelist", "models_app_project_changelist"):
        html = client.get(reverse(f"admin:{page}")).content.decode()
        filters = re.findall(r'team__id__exact=\d+"[^>]*>([^<]+)<', html)
        assert sorted(filters) == sorted([str(first), str(second)]), page
    columns = client.get(reverse("admin:models_app_model_changelist")).content.decode()
    cells = re.findall(r'<td class="field-team_cell">(.*?)\s*</td>', columns)
    assert sorted(cells) == sorted(
        f'<span class="console-clip" title="{team}">Studio</span>'
        f'<span class="console-clip console-detail" title="{team}">{team.public_id}</span>'
        for team in (first, second)
    )
    select = client.get(reverse("admin:models_app_model_add")).content.decode()
    assert f">{first}</option>" in select and f">{second}</option>" in select


def test_a_staff_members_team_filter_offers_their_teams_only(client) -> None:
    user = UserFactory(is_staff=True)
    ours = [TeamFactory(name="Studio"), TeamFactory(name="Studio")]
    theirs = TeamFactory(name="Studio")
    for team in ours:
        membership_set(team=team, user=user, role=Membership.Role.MEMBER)
        ModelFactory(team=team)
    client.force_login(user)
    for page in ("models_app_model_changelist", "models_app_trainingimage_changelist"):
        html = client.get(reverse(f"admin:{page}")).content.decode()
        assert sorted(re.findall(r'__id__exact=\d+"[^>]*>([^<]+)<', html)) == sorted(map(str, ours)), page
        assert theirs.public_id not in html
