"""The pages a browser opens at the server's root: the front page, the icon, the documentation site, and
refused requests logged as one line."""

from __future__ import annotations

import io
import logging

import pytest
from django.urls import reverse

from config.logging import ClientErrorsOnOneLine
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_the_front_page_says_what_this_is_and_links_to_the_admin_the_api_and_the_docs(
    client, settings, tmp_path
) -> None:
    page = client.get("/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'href="/admin/"' in text and 'href="/api/docs/"' in text and 'href="/api/schema/"' in text
    assert "make docs" in text and 'href="/docs/"' not in text  # not built here: it says how to build it
    assert "FLUX.2" in text  # the families it trains, from the families' own records

    settings.DOCS_SITE_DIR = tmp_path / "site"
    (settings.DOCS_SITE_DIR / "training").mkdir(parents=True)
    (settings.DOCS_SITE_DIR / "index.html").write_text("<h1>Docs home</h1>")
    (settings.DOCS_SITE_DIR / "training" / "index.html").write_text("<h1>Training guide</h1>")
    assert 'href="/docs/"' in client.get("/").content.decode()
    assert b"Docs home" in b"".join(client.get("/docs/").streaming_content)
    assert b"Training guide" in b"".join(client.get("/docs/training/").streaming_content)
    assert client.get("/docs/../config/settings/base.py").status_code in (400, 404)  # nothing outside the site


def test_the_admin_view_site_link_leads_to_the_front_page_and_every_page_has_an_icon(admin_client) -> None:
    admin_page = admin_client.get(reverse("admin:index")).content.decode()
    assert 'href="/"' in admin_page  # "View site"
    assert admin_client.get("/").status_code == 200
    assert 'rel="icon"' in admin_page
    icon = admin_client.get("/favicon.ico")
    assert icon.status_code == 200 and icon["Content-Type"] == "image/png"
    assert b"".join(icon.streaming_content).startswith(b"\x89PNG")


def test_a_refused_request_is_logged_as_one_line(client) -> None:
    """A 403 is the client's doing: one line on the console, not the tracebacks Django attaches (it printed two)."""
    [console] = [
        handler
        for handler in logging.getLogger().handlers
        if any(isinstance(item, ClientErrorsOnOneLine) for item in handler.filters)
    ]
    assert isinstance(console, logging.StreamHandler)
    captured = io.StringIO()
    previous = console.setStream(captured)
    try:
        staff = UserFactory(is_staff=True)  # staff without permissions: the admin refuses the page
        client.force_login(staff)
        assert client.get(reverse("admin:auth_user_changelist")).status_code == 403
    finally:
        console.setStream(previous)
    lines = captured.getvalue().splitlines()
    assert [line for line in lines if "Forbidden" in line] == [lines[0]] and len(lines) == 1
    assert "Traceback" not in captured.getvalue()
