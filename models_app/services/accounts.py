"""Teams, projects, memberships and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from models_app.errors import InvalidInput
from models_app.models import ApiKey, Membership, Project, Team

SECRET_BYTES = 32


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(api_key: ApiKey, secret: str) -> bool:
    return hmac.compare_digest(api_key.secret_hash, hash_secret(secret))


@transaction.atomic
def team_create(*, name: str, owner: AbstractBaseUser | None = None, max_parallel_trainings: int | None = None) -> Team:
    name = name.strip()
    if not name:
        raise InvalidInput("a team needs a name", field="name")
    team = Team.objects.create(name=name, max_parallel_trainings=max_parallel_trainings)
    if owner is not None:
        Membership.objects.create(team=team, user=owner, role=Membership.Role.OWNER)
    return team


@transaction.atomic
def project_create(*, team: Team, name: str) -> Project:
    name = name.strip()
    if not name:
        raise InvalidInput("a project needs a name", field="name")
    if Project.objects.filter(team=team, name=name).exists():
        raise InvalidInput(f"the team already has a project named {name!r}", field="name")
    return Project.objects.create(team=team, name=name)


@transaction.atomic
def membership_set(*, team: Team, user: AbstractBaseUser, role: str = Membership.Role.MEMBER) -> Membership:
    if role not in Membership.Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Membership.Role.values)}", field="role")
    membership, _ = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def api_key_create(*, team: Team, name: str = "", created_by: AbstractBaseUser | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret. The secret is returned this once and never stored."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    api_key = ApiKey.objects.create(team=team, name=name, secret_hash=hash_secret(secret), created_by=created_by)
    return api_key, secret


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_token(api_key: ApiKey, secret: str) -> str:
    """The bearer form of a key: `<key>.<secret>` (Basic auth takes the two as user and password)."""
    return f"{api_key.key}.{secret}"
