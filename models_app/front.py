"""The site's front page, its icon, and the built documentation site: the pages a browser opens at the
server's root, beside the admin and the APIs."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles import finders
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.static import serve

from contract.families import FAMILY_LABELS

FAVICON = "models_app/favicon.png"


def front_page(request: HttpRequest) -> HttpResponse:
    """What this server is, and where to go: the admin, the API reference, the documentation."""
    docs_built = (Path(settings.DOCS_SITE_DIR) / "index.html").is_file()
    return render(
        request,
        "front.html",
        {
            "families": sorted(FAMILY_LABELS.values()),
            "docs_built": docs_built,
            "signed_in": request.user.is_authenticated,
        },
    )


def favicon(request: HttpRequest) -> FileResponse:
    """/favicon.ico, which every browser asks for: the project's icon (a PNG, which browsers accept there)."""
    found = finders.find(FAVICON)
    if not found:
        raise Http404("no icon")
    response = FileResponse(open(str(found), "rb"), content_type="image/png")  # noqa: SIM115 (FileResponse closes it)
    response["Cache-Control"] = "max-age=86400"
    return response


def documentation(request: HttpRequest, path: str = "") -> HttpResponse | FileResponse:
    """The documentation site built from docs/ (`make docs`), served as static files by this server."""
    root = Path(settings.DOCS_SITE_DIR)
    if not (root / "index.html").is_file():
        raise Http404("the documentation site is not built here: run `make docs`")
    if path == "" or path.endswith("/"):
        path += "index.html"
    return serve(request, path, document_root=str(root))
