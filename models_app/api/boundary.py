"""What every request under the API prefixes meets before any view: bounded size, a clean path and query
string; and the JSON answers for what no view handles (an unmatched route, a refused body, a crash).

Bodies are checked by the parsers in `models_app.api.inputs`; the rules themselves live in
`models_app.input_rules`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from models_app.input_rules import QUERY_VALUE_MAX, control_character

logger = logging.getLogger(__name__)

API_PREFIXES = ("/v1/", "/api/")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def error_response(status: int, detail: str, code: str, field: str | None = None) -> JsonResponse:
    """An error in the /v1 shape (`{"detail", "code", "field"}`), which seed 003's `{"detail"}` readers read too."""
    body = {"detail": detail, "code": code, **({"field": field} if field else {})}
    return JsonResponse(body, status=status)


def request_refusal(request: HttpRequest) -> JsonResponse | None:
    """The answer to a request refused before routing, or None when it may go on."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit():
        return error_response(400, f"Content-Length {declared[:40]!r} is not a number of bytes", "invalid_header")
    limit = settings.API_MAX_BODY_BYTES
    if int(declared) > limit:
        return error_response(
            413, f"the request body is {declared} bytes; at most {limit} bytes are accepted", "request_too_large"
        )
    character = control_character(request.path_info)
    if character:
        return error_response(400, f"the URL path contains {character}, which is not allowed", "invalid_characters")
    try:
        query = list(request.GET.lists())
    except SuspiciousOperation as exc:
        return error_response(400, f"the query string is refused: {exc}", "invalid_query")
    for name, values in query:
        shown = name.encode("unicode_escape").decode()[:60]
        if control_character(name):
            return error_response(
                400, f"the query parameter {shown!r} has a forbidden character in its name", "invalid_characters"
            )
        for value in values:
            character = control_character(value)
            if character:
                return error_response(
                    400,
                    f"{name}: contains {character}, which is not allowed",
                    "invalid_characters",
                    field=name,
                )
            if len(value) > QUERY_VALUE_MAX:
                return error_response(
                    400,
                    f"{name}: may be at most {QUERY_VALUE_MAX} characters; got {len(value)}",
                    "too_long",
                    field=name,
                )
    return None


class ApiBoundaryMiddleware:
    """Refuses, in JSON, an API request whose size, path or query string breaks the input rules; turns
    Django's own refusals of a body (too big, too many fields) into JSON answers as well."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_api_path(request.path_info):
            refusal = request_refusal(request)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_path(request.path_info):
            return None
        if isinstance(exception, RequestDataTooBig):
            return error_response(413, f"the request body is too large: {exception}", "request_too_large")
        if isinstance(exception, SuspiciousOperation):
            return error_response(400, f"the request is refused: {exception}", "invalid_request")
        return None


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: JSON under the API prefixes, Django's page elsewhere."""
    if is_api_path(request.path_info):
        return error_response(404, f"no API route matches {request.path_info!r}", "not_found")
    return defaults.page_not_found(request, exception or Exception())


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: JSON under the API prefixes, Django's page elsewhere."""
    if is_api_path(request.path_info):
        return error_response(500, "internal server error; the error was logged", "server_error")
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400 (Django's own refusals, such as a bad Host header): JSON under the API prefixes."""
    if is_api_path(request.path_info):
        return error_response(400, f"the request is refused: {exception}", "invalid_request")
    return defaults.bad_request(request, exception or Exception())
