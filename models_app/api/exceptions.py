"""The one place where errors become HTTP responses.

/v1 answers `{"detail": "...", "code": "...", "field": "..."}`. Seed 003's resource (views with
`error_style = "fastapi"`) answers every validation error, the serializer's and the services' (InvalidInput),
as its `HTTPValidationError` (`{"detail": [{"loc", "msg", "type"}]}`, status 422) and other errors as
`{"detail": "..."}`.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from models_app.errors import ApplicationError, InvalidInput


def flatten(detail: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str, str]]:
    """DRF's nested error details as (location, message, code) triples."""
    if isinstance(detail, dict):
        return [item for key, value in detail.items() for item in flatten(value, (*path, key))]
    if isinstance(detail, list):
        if all(isinstance(item, str) for item in detail):
            return [(path, str(item), getattr(item, "code", "invalid")) for item in detail]
        return [item for index, value in enumerate(detail) for item in flatten(value, (*path, index))]
    return [(path, str(detail), getattr(detail, "code", "invalid"))]


# A message quotes what it refuses ('"…" is not a valid choice.'); a megabyte of it helps nobody.
MESSAGE_MAX = 500


def _shortened(message: str) -> str:
    return message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 1] + "…"


def _location(field: str) -> list[str | int]:
    """A field name as the service writes it ("pairs[0].source_id") as a FastAPI location."""
    parts: list[str | int] = []
    for piece in field.replace("]", "").replace("[", ".").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return parts


def _field_name(path: tuple[Any, ...]) -> str:
    name = ""
    for part in path:
        if part == "non_field_errors":
            continue
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    view = context.get("view")
    fastapi_style = getattr(view, "error_style", "") == "fastapi"
    if isinstance(exc, exceptions.ValidationError):
        problems = flatten(exc.detail)
        if fastapi_style:
            body: dict[str, Any] = {
                "detail": [
                    {"loc": ["body", *path], "msg": _shortened(message), "type": f"value_error.{code}"}
                    for path, message, code in problems
                ]
            }
            return Response(body, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        path, message, code = problems[0]
        field = _field_name(path)
        return Response(
            {
                "detail": _shortened(f"{field}: {message}" if field else message),
                "code": code,
                **({"field": field} if field else {}),
            },
            status=status.HTTP_400_BAD_REQUEST,
        )
    if fastapi_style and isinstance(exc, InvalidInput):
        # A value the service refuses (an empty source_images, a path it may not read) is a validation error
        # there too: the same 422 body, located at the field it names.
        location = ["body", *_location(exc.field)] if exc.field else ["body"]
        body = {"detail": [{"loc": location, "msg": _shortened(exc.message), "type": f"value_error.{exc.code}"}]}
        return Response(body, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
    if isinstance(exc, ApplicationError):
        body = {"detail": _shortened(exc.message), "code": exc.code}
        if exc.field:
            body["field"] = exc.field
        body.update(exc.extra)
        return Response(body, status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(_not_found_message(context))
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if fastapi_style and isinstance(exc, exceptions.ParseError):
        # FastAPI answers a body it cannot decode as a request validation error.
        body = {"detail": [{"loc": ["body"], "msg": str(exc.detail), "type": "json_invalid"}]}
        return Response(body, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        response.data = _api_exception_body(exc)
    return response


def _api_exception_body(exc: exceptions.APIException) -> dict[str, Any]:
    """DRF's own errors (parse error, 401, 404, 405, 406, 415, 429) in the published shape: detail and code."""
    detail = exc.detail
    if isinstance(detail, dict):
        # simplejwt's InvalidToken carries {"detail", "code", "messages"} already.
        message = str(detail.get("detail", "")) or "; ".join(f"{key}: {value}" for key, value in detail.items())
        code = str(detail.get("code", exc.default_code))
        return {**{k: v for k, v in detail.items() if k not in ("detail", "code")}, "detail": message, "code": code}
    if isinstance(detail, list):
        return {"detail": "; ".join(map(str, detail)), "code": str(exc.default_code)}
    return {"detail": str(detail), "code": str(getattr(detail, "code", None) or exc.default_code)}


def _not_found_message(context: dict[str, Any]) -> str:
    request = context.get("request")
    requested_format = request.query_params.get("format") if request is not None else None
    if requested_format:
        return f"format {requested_format!r} is not one this endpoint answers in; leave it out for JSON"
    return "not found"
