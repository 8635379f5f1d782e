"""Request helpers shared by the views: key spelling, strict input, pagination."""

from __future__ import annotations

from typing import Any

from django.http import QueryDict
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination

from models_app.errors import InvalidInput
from models_app.text_case import snake_case


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


class ListPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


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
