"""Teams, projects, memberships and API keys."""

from __future__ import annotations

import copy
import hashlib
import hmac
import secrets
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from models_app.errors import Conflict, InvalidInput
from models_app.models import ApiKey, Membership, Project, Team
from models_app.permissions import user_groups_sync

SECRET_BYTES = 32


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(api_key: ApiKey, secret: str) -> bool:
    return hmac.compare_digest(api_key.secret_hash, hash_secret(secret))


# last_used_at is for people, not for accounting: written at most this often per key.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Keys (with their team) this process found active, by key id, with the monotonic time it looked.
_active_keys: dict[str, tuple[ApiKey, float]] = {}
_ACTIVE_KEYS_MAX = 10_000


def api_key_authenticate(*, key: str, secret: str, fresh: bool = True) -> ApiKey | None:
    """The active API key `key` whose secret is `secret`, with its team; None if there is none.

    The secret is always checked. With `fresh=False` (a read: GET, HEAD, OPTIONS), a key this process
    found active less than API_KEY_CACHE_SECONDS ago is not read again: that query (built by the ORM,
    then a round trip) was a fifth of a model detail's time. The price is that a revoked key may go on
    reading for that long in the other processes (`api_key_revoke` forgets it in its own at once).
    Writes pass `fresh=True` and always see the database's key and team (its credits and limits)."""
    max_age = settings.API_KEY_CACHE_SECONDS
    now = time.monotonic()
    known = _active_keys.get(key) if not fresh and max_age > 0 else None
    if known is not None and now - known[1] < max_age:
        api_key = _detached(known[0])
    else:
        found = ApiKey.objects.select_related("team").filter(key=key, revoked_at__isnull=True).first()
        if found is None:
            _active_keys.pop(key, None)
            return None
        api_key = found
        if max_age > 0:
            if len(_active_keys) >= _ACTIVE_KEYS_MAX:
                _active_keys.clear()
            _active_keys[key] = (_detached(found), now)
    if not secret or not secret_matches(api_key, secret):
        return None
    _api_key_used(api_key)
    return api_key


def _detached(api_key: ApiKey) -> ApiKey:
    """A copy of the key and of its team, so that what one request does to them reaches no other."""
    detached = copy.copy(api_key)
    detached.team = copy.copy(api_key.team)
    return detached


def _api_key_used(api_key: ApiKey) -> None:
    used_at = timezone.now()
    if api_key.last_used_at is not None and used_at - api_key.last_used_at <= LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=used_at)
    api_key.last_used_at = used_at
    known = _active_keys.get(api_key.key)
    if known is not None:
        known[0].last_used_at = used_at


@transaction.atomic
def team_create(*, name: str, owner: User | None = None, max_parallel_trainings: int | None = None) -> Team:
    name = name.strip()
    if not name:
        raise InvalidInput("a team needs a name", field="name")
    if max_parallel_trainings is not None and (
        isinstance(max_parallel_trainings, bool)
        or not isinstance(max_parallel_trainings, int)
        or max_parallel_trainings < 0
    ):
        raise InvalidInput(
            f"max_parallel_trainings must be a whole number, 0 or more (0: no training at all); got {max_parallel_trainings!r}",
            field="max_parallel_trainings",
        )
    team = Team.objects.create(name=name, max_parallel_trainings=max_parallel_trainings)
    if owner is not None:
        Membership.objects.create(team=team, user=owner, role=Membership.Role.OWNER)
        user_groups_sync(owner)
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
def membership_set(*, team: Team, user: User, role: str = Membership.Role.MEMBER) -> Membership:
    if role not in Membership.Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Membership.Role.values)}", field="role")
    membership, _ = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
    user_groups_sync(user)  # what the role lets them do in the admin (models_app/permissions.py)
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """Take the user out of the team; the groups of the roles they no longer hold go with it."""
    user = membership.user
    Membership.objects.filter(pk=membership.pk).delete()
    user_groups_sync(user)


@transaction.atomic
def api_key_create(*, team: Team, name: str = "", created_by: User | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret. The secret is returned this once and never stored."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    api_key = ApiKey.objects.create(team=team, name=name, secret_hash=hash_secret(secret), created_by=created_by)
    return api_key, secret


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke the key now; a key revoked before is a Conflict naming when (nothing changes)."""
    revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    _active_keys.pop(api_key.key, None)
    api_key.refresh_from_db(fields=["revoked_at"])
    if not revoked:
        raise Conflict(f"API key {api_key.key} was already revoked on {api_key.revoked_at:%Y-%m-%d %H:%M} UTC")
    return api_key


@transaction.atomic
def staff_user_create(*, username: str, password: str, team: Team, role: str = Membership.Role.MEMBER) -> Any:
    """A staff account (it can sign in to the admin) with a password, a member of the team with `role`."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    username = username.strip()
    if not username:
        raise InvalidInput("a user needs a username", field="username")
    users = get_user_model()
    if users.objects.filter(username=username).exists():
        raise Conflict(f"user {username!r} already exists (use `user password` to change its password)")
    user = users(username=username, is_staff=True)
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="password") from exc
    user.set_password(password)
    user.save()
    membership_set(team=team, user=user, role=role)
    return user


@transaction.atomic
def user_set_password(*, user: User, password: str) -> User:
    """Set a user's password, checked by the project's password validators."""
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="password") from exc
    user.set_password(password)
    user.save(update_fields=["password"])
    return user


def api_key_token(api_key: ApiKey, secret: str) -> str:
    """The bearer form of a key: `<key>.<secret>` (Basic auth takes the two as user and password)."""
    return f"{api_key.key}.{secret}"
