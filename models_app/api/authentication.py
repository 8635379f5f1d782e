"""Team API keys: `Authorization: Basic base64(key:secret)` or `Authorization: Bearer key.secret`."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, TypeAlias

from django.contrib.auth.models import AnonymousUser, User
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import Token

from models_app.api.inputs import StrictSerializer
from models_app.input_rules import control_character, public_id_plausible
from models_app.models import ApiKey, Team
from models_app.services.accounts import api_key_authenticate

SECRET_MAX = 200
# The largest primary key a user row can have (a bigint).
USER_ID_MAX = 2**63 - 1


@dataclass
class TeamPrincipal:
    """The caller behind an API key: the key's team, with no user attached."""

    team: Team
    api_key: ApiKey
    is_authenticated: bool = True
    is_staff: bool = False
    is_superuser: bool = False

    def __str__(self) -> str:
        return f"API key {self.api_key.key}"


# Who `request.user` is in this API: the DRF stubs know only the first two.
Principal: TypeAlias = User | AnonymousUser | TeamPrincipal


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword_hint = 'Basic realm="api"'

    def authenticate(self, request: Request) -> tuple[TeamPrincipal, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise exceptions.AuthenticationFailed("malformed Basic credentials") from exc
            key, _, secret = decoded.partition(":")
        elif scheme == "bearer" and credentials.startswith("key_"):
            key, _, secret = credentials.partition(".")
        else:
            return None  # not an API key: let the next authenticator look
        if not public_id_plausible(key) or control_character(secret) or len(secret) > SECRET_MAX:
            raise exceptions.AuthenticationFailed("malformed API key: a control character or an over-long value")
        api_key = api_key_authenticate(key=key, secret=secret, fresh=request.method not in SAFE_METHODS)
        if api_key is None:
            raise exceptions.AuthenticationFailed("invalid API key")
        return TeamPrincipal(team=api_key.team, api_key=api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword_hint


def token_user_id_check(user_id: Any) -> None:
    """A signed token's user id must be one a user row can have (a positive bigint): 401 otherwise."""
    if isinstance(user_id, str) and user_id.isascii() and user_id.isdigit():
        user_id = int(user_id)
    if isinstance(user_id, bool) or not isinstance(user_id, int) or not 0 < user_id <= USER_ID_MAX:
        raise exceptions.AuthenticationFailed("the token's user_id is not a valid user id", code="user_not_found")


class UserJWTAuthentication(JWTAuthentication):
    """simplejwt's JWT authentication, where a token whose user id cannot be a user's is a 401, not a crash."""

    def get_user(self, validated_token: Token) -> Any:
        token_user_id_check(validated_token.get(jwt_settings.USER_ID_CLAIM))
        return super().get_user(validated_token)


class UserTokenObtainPairSerializer(StrictSerializer, TokenObtainPairSerializer):
    """simplejwt's token pair for a user name and password; a field it does not know is refused."""


class UserTokenRefreshSerializer(StrictSerializer, TokenRefreshSerializer):
    """simplejwt's refresh, with the same check of the token's user id before the user is looked up; a field it
    does not know is refused."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        user_id = self.token_class(attrs["refresh"]).payload.get(jwt_settings.USER_ID_CLAIM)
        if user_id is not None:
            token_user_id_check(user_id)
        return super().validate(attrs)


class ApiKeySchemes(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes API keys: Basic `key:secret`, or Bearer `key.secret`."""

    target_class = ApiKeyAuthentication
    name = ["apiKeyBasic", "apiKeyBearer"]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, str]]:
        return [
            {"type": "http", "scheme": "basic", "description": "The API key as user name, its secret as password"},
            {"type": "http", "scheme": "bearer", "description": "`<key>.<secret>` of a team API key, or a user JWT"},
        ]


class UserJWTScheme(SimpleJWTScheme):
    """The schema describes UserJWTAuthentication as drf-spectacular describes simplejwt's own."""

    # drf-spectacular declares `str | type | None`; SimpleJWTScheme's string default narrows it to str.
    target_class = UserJWTAuthentication  # type: ignore[assignment]
