"""Per-key rate limits on the expensive calls: uploads, training starts and generations.

Each caller (an API key, else a user) has its own budget per scope, set in `API_THROTTLE_RATES`
("120/min"; None turns a scope off). Over it, DRF answers 429 with `Retry-After`. The counts live in
Django's cache: per process with the default local-memory cache, shared with a shared cache.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle
from rest_framework.views import APIView

from models_app.api.authentication import Principal, TeamPrincipal


class CallerRateThrottle(SimpleRateThrottle):
    """A budget per scope and per caller: the API key, else the signed-in user, else the client address."""

    scope = ""

    def get_rate(self) -> str | None:
        # Read at each request (not at import, as DRF does), so a changed setting takes effect.
        rate: str | None = settings.API_THROTTLE_RATES.get(self.scope)
        return rate

    def get_cache_key(self, request: Request, view: Any) -> str:
        principal: Principal = request.user
        if isinstance(principal, TeamPrincipal):
            ident = f"key-{principal.api_key.pk}"
        elif principal is not None and getattr(principal, "is_authenticated", False):
            ident = f"user-{principal.pk}"
        else:
            ident = f"address-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class UploadThrottle(CallerRateThrottle):
    scope = "uploads"


class StartThrottle(CallerRateThrottle):
    scope = "starts"


class GenerationThrottle(CallerRateThrottle):
    scope = "generations"


class ThrottledWrites(APIView):
    """A view mixin: the throttle of the call being made (by method, or by what the body asks), if any."""

    def throttle_for(self, request: Request) -> type[BaseThrottle] | None:
        return None

    def get_throttles(self) -> list[BaseThrottle]:
        throttle = self.throttle_for(self.request)
        return [throttle()] if throttle is not None else []
