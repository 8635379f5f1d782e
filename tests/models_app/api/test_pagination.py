"""The list pages read their rows and their total in one query and answer exactly what DRF's own
page-number pagination answers: the same count, rows, next and previous links and refusals."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from models_app.api.inputs import ListPagination
from models_app.models import Model
from tests.factories import ModelFactory, TeamFactory

pytestmark = pytest.mark.django_db


class StockPagination(PageNumberPagination):
    page_size = ListPagination.page_size
    page_size_query_param = ListPagination.page_size_query_param
    max_page_size = ListPagination.max_page_size


def answer(pagination: PageNumberPagination, queryset, query: str) -> tuple[object, ...]:
    request = Request(APIRequestFactory().get(f"/v1/models{query}", HTTP_HOST="localhost"))
    try:
        rows = pagination.paginate_queryset(queryset, request)
    except NotFound as exc:
        return ("404", str(exc.detail))
    response = pagination.get_paginated_response([row.pk for row in rows or []])
    return (response.data["count"], response.data["next"], response.data["previous"], response.data["results"])


@pytest.mark.parametrize("rows", [0, 1, 5])
def test_pages_answer_what_drf_answers(rows: int) -> None:
    team = TeamFactory()
    for _ in range(rows):
        ModelFactory(team=team)
    queryset = Model.objects.filter(team=team).order_by("-created_at", "-id")
    queries = ["", "?page=1", "?page_size=2", "?page_size=2&page=2", "?page_size=2&page=3", "?page_size=2&page=4",
               "?page=2", "?page=0", "?page=-1", "?page=abc", "?page=last&page_size=2", "?page=%D9%A3",
               "?page_size=0", "?page_size=1000", "?page=99999999999999999999999", f"?page={2**31 // 50 + 2}"]  # fmt: skip
    for query in queries:
        assert answer(ListPagination(), queryset, query) == answer(StockPagination(), queryset, query), query


def test_a_page_and_its_total_are_one_query() -> None:
    team = TeamFactory()
    for _ in range(3):
        ModelFactory(team=team)
    queryset = Model.objects.filter(team=team).order_by("-created_at", "-id")
    with CaptureQueriesContext(connection) as captured:
        assert answer(ListPagination(), queryset, "?page_size=2&page=2")[0] == 3
    assert len(captured) == 1
