"""The OpenAPI schema's description of the errors any operation can answer, whatever its view declares.

Every operation can meet the input boundary (400), authentication (401), an unknown id or format (404),
a method it lacks (405), an Accept header it cannot satisfy (406), an oversized body (413) and a media
type it does not parse (415), all answered `{"detail", "code"}` (`models_app.api.exceptions`,
`models_app.api.boundary`). A drf-spectacular post-processing hook adds those a view did not document.
"""

from __future__ import annotations

from typing import Any

GENERIC_ERRORS = {
    "400": "The request breaks an input rule (characters, lengths, JSON depth) or cannot be parsed",
    "401": "No or wrong credentials",
    "404": "No such object in the caller's team, or no such format",
    "405": "The method is not allowed on this path",
    "406": "No answer in a media type the Accept header allows",
    "413": "The request body is larger than the server reads",
    "415": "The body's media type is not one this operation parses",
}
ERROR_COMPONENT = "Error"


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Post-processing hook: document the generic errors on every operation that does not already."""
    reference = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
    if ERROR_COMPONENT not in result.get("components", {}).get("schemas", {}):
        return result
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, description in GENERIC_ERRORS.items():
                responses.setdefault(
                    code, {"description": description, "content": {"application/json": {"schema": reference}}}
                )
    return result
