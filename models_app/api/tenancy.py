"""Which team a request acts for."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request

from models_app import selectors
from models_app.api.authentication import Principal, TeamPrincipal
from models_app.errors import InvalidInput, NotFound
from models_app.input_rules import public_id_plausible, shown_id
from models_app.models import Team

TEAM_PARAMETER = OpenApiParameter(
    "team_id", str, description="Team to act for: needed only by a user (JWT or session) who belongs to several teams"
)


def request_team(request: Request, team_id: str | None = None) -> Team:
    """The API key's team; for a signed-in user, their only team or the one named by `team_id`."""
    principal: Principal = request.user
    team_id = team_id or request.query_params.get("team_id") or request.query_params.get("teamId")
    if team_id and not public_id_plausible(team_id):
        raise NotFound(f"team {shown_id(team_id)} not found", field="team_id")
    if isinstance(principal, TeamPrincipal):
        if team_id and team_id != principal.team.public_id:
            raise NotFound(f"team {team_id} not found", field="team_id")
        return principal.team
    if isinstance(principal, AnonymousUser):  # IsAuthenticated stops these first; no query on no one
        raise NotFound("you belong to no team")
    teams = selectors.team_list_for_user(user_id=principal.pk)
    if team_id:
        team = teams.filter(public_id=team_id).first()
        if team is None:
            raise NotFound(f"team {team_id} not found", field="team_id")
        return team
    found = list(teams[:2])
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFound("you belong to no team")
    raise InvalidInput("you belong to several teams: name one with team_id", field="team_id")
