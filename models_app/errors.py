"""The one application error type. Services raise it; the API maps it to HTTP in one place."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra or {}


class InvalidInput(ApplicationError):
    status_code = 400
    code = "invalid"


class NotFound(ApplicationError):
    status_code = 404
    code = "not_found"


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"


class InsufficientCredits(ApplicationError):
    status_code = 402
    code = "insufficient_credits"


class LimitReached(ApplicationError):
    status_code = 429
    code = "limit_reached"
