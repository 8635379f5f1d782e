"""The API's input boundary: parsers that bound and clean every body, strict fields, key spelling, pagination.

The rules themselves (characters, lengths, depth) live in `models_app.input_rules`; this module applies
them to what DRF parses, so every view receives a body that already passed them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.paginator import Page
from django.db.models import Count, Window
from django.http import QueryDict
from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import PageNumberPagination

from models_app.errors import InvalidInput
from models_app.input_rules import JSON_MAX_DEPTH, control_character, structure_problem
from models_app.text_case import snake_case

# A data URL carries a whole image in base64: bounded by the body limit, not by a text limit.
DATA_URL_MAX = 40 * 1024 * 1024


def _refuse_structure(data: Any) -> None:
    problem = structure_problem(data)
    if problem is None:
        return
    detail: Any = [problem.message]
    for part in reversed(problem.path):
        detail = {part: detail}
    if not isinstance(detail, dict):
        detail = {"non_field_errors": detail}
    raise serializers.ValidationError(detail, code=problem.code)


class BoundedJSONParser(parsers.JSONParser):
    """JSON with at most JSON_MAX_DEPTH levels of nesting and no control characters in keys or strings."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError(f"JSON parse error - nested deeper than {JSON_MAX_DEPTH} levels") from exc
        _refuse_structure(data)
        return data


def _refuse_form_structure(data: QueryDict) -> None:
    _refuse_structure({key: values[0] if len(values) == 1 else values for key, values in data.lists()})


class BoundedMultiPartParser(parsers.MultiPartParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        _refuse_form_structure(parsed.data)
        return parsed


class BoundedFormParser(parsers.FormParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        _refuse_form_structure(data)
        return data


class StrictCharField(serializers.CharField):
    """A string field that takes only strings: a number or a boolean is refused, never turned into text.

    Control characters are refused (tab and line breaks too, unless `multiline`), and every
    instance has a `max_length`."""

    default_error_messages = {
        "invalid": "Not a valid string: send a JSON string.",
        "control_character": "Contains {character}, which is not allowed.",
    }

    def __init__(self, *, max_length: int, multiline: bool = False, **kwargs: Any) -> None:
        self.multiline = multiline
        super().__init__(max_length=max_length, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        character = control_character(data, multiline=self.multiline)
        if character:
            self.fail("control_character", character=character)
        return super().to_internal_value(data)


def _from_form(field: serializers.Field) -> bool:
    """Whether the field's data came from a form (where every value is text) rather than JSON."""
    return isinstance(getattr(field.root, "initial_data", None), QueryDict)


class StrictIntegerField(serializers.IntegerField):
    """An integer as JSON sends one: "5", 5.0 and true are refused (a form's text "5" is read as 5)."""

    default_error_messages = {"invalid": "A valid integer is required: send a JSON number without a fraction."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool | float) or (isinstance(data, str) and not _from_form(self)):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class StrictFloatField(serializers.FloatField):
    """A number as JSON sends one: "0.1" and true are refused (a form's text is read as a number)."""

    default_error_messages = {"invalid": "A valid number is required: send a JSON number."}

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or (isinstance(data, str) and not _from_form(self)):
            self.fail("invalid")
        return float(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    """true or false (or, from a form, their spellings "true"/"false"/"1"/"0"); "yes" and 5 are refused."""

    default_error_messages = {"invalid": "Must be true or false."}
    FORM_SPELLINGS = {"true": True, "1": True, "false": False, "0": False}

    def to_internal_value(self, data: Any) -> bool:
        if isinstance(data, bool):
            return data
        if isinstance(data, str) and data.lower() in self.FORM_SPELLINGS:
            return self.FORM_SPELLINGS[data.lower()]
        self.fail("invalid")


def snake_keys(data: Any) -> Any:
    """The request body with camelCase keys spelled in snake_case (both spellings are accepted)."""
    if isinstance(data, QueryDict):
        return {snake_case(key): (values[0] if len(values) == 1 else values) for key, values in data.lists()}
    if isinstance(data, dict):
        return {snake_case(str(key)): value for key, value in data.items()}
    return data


class StrictSerializer(serializers.Serializer):
    """An input serializer that refuses fields it does not know, so a typo is an error, not a no-op."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {unknown[0]: [f"unknown field; accepted fields: {', '.join(sorted(self.fields))}"]}
                )
        return super().to_internal_value(data)


# Past this offset (no list holds that many rows) a page goes through DRF's code, which counts the rows
# first and refuses the page, instead of sending the database an offset beyond its integers.
OFFSET_MAX = 2**31 - 1


class ListPagination(PageNumberPagination):
    """DRF's page-number pages, each read with its total in one query.

    DRF's own paginate_queryset counts the rows in a query of its own before reading the page; building and
    compiling that second query cost a list request as much as the page's rows did. Here a window function
    counts the whole filtered set beside the page's rows (`COUNT(*) OVER ()` is computed before the LIMIT).
    An empty first page has a total of 0; a later page that reads no rows, a page given as "last", as no
    number or as one past OFFSET_MAX go through DRF's own code, with its answers (404 "Invalid page.")."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> list[Any] | None:
        def read(offset: int, limit: int) -> tuple[list[Any], int]:
            rows = list(queryset.annotate(page_total_rows=Window(Count("*")))[offset : offset + limit])
            return rows, (rows[0].page_total_rows if rows else 0)

        return self.paginate_read(read, lambda: queryset, request, view)

    def paginate_read(
        self,
        read: Callable[[int, int], tuple[list[Any], int]],
        queryset: Callable[[], Any],
        request: Any,
        view: Any = None,
    ) -> list[Any] | None:
        """The page, from `read(offset, limit)`, which returns the rows and the total (0 when it read none).
        `queryset()` is the whole list, for the cases DRF's own code answers."""
        page_size = self.get_page_size(request)
        raw = request.query_params.get(self.page_query_param) or "1"
        number = int(raw) if raw.isascii() and raw.isdigit() else 0
        offset = (number - 1) * page_size if page_size else 0
        if not page_size or number < 1 or offset > OFFSET_MAX:
            return super().paginate_queryset(queryset(), request, view)
        rows, total = read(offset, page_size)
        if not rows and number > 1:
            return super().paginate_queryset(queryset(), request, view)
        self.request = request
        paginator = self.django_paginator_class(rows, page_size)
        paginator.count = total  # the cached_property, known without a query
        self.page = Page(rows, number, paginator)
        self.display_page_controls = paginator.num_pages > 1 and self.template is not None
        return rows


def require_one(values: dict[str, Any], names: tuple[str, ...]) -> str:
    """The one name of `names` that has a value; 400 if none or several do."""
    given = [name for name in names if values.get(name) not in (None, "", [])]
    if len(given) != 1:
        raise InvalidInput(f"send exactly one of: {', '.join(names)}", field=names[0])
    return given[0]


def paginated(name: str, item: serializers.Serializer) -> serializers.Serializer:
    """The schema of a ListPagination page of `item`s."""
    from drf_spectacular.utils import inline_serializer

    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item,
        },
    )
