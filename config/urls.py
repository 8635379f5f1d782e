from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponseBase, HttpResponseForbidden
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from models_app.front import documentation, favicon, front_page
from models_app.media_access import TOKEN_PARAMETER, media_token_valid

handler400 = "models_app.api.boundary.bad_request"
handler404 = "models_app.api.boundary.not_found"
handler500 = "models_app.api.boundary.server_error"

urlpatterns = [
    path("", front_page, name="front-page"),
    path("favicon.ico", favicon, name="favicon"),
    path("docs/", documentation, name="documentation"),
    path("docs/<path:path>", documentation, name="documentation-page"),
    path("admin/", admin.site.urls),
    path("v1/", include("models_app.api.urls")),
    path("api/v1/", include("models_app.api.training_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]


def serve_media(request: HttpRequest, path: str) -> HttpResponseBase:
    """Serve a file of MEDIA_ROOT to the holder of a URL signed for it (models_app.media_access); read at
    request time so that a changed setting (tests) is honoured."""
    if not media_token_valid(path, request.GET.get(TOKEN_PARAMETER, "")):
        return HttpResponseForbidden("This media URL is unsigned, altered or expired: ask the API for a fresh one.")
    return serve(request, path, document_root=str(settings.MEDIA_ROOT))


if settings.SERVE_MEDIA:
    # Development and tests only: in production the web server or the object store serves media.
    urlpatterns += [re_path(rf"^{settings.MEDIA_URL.lstrip('/')}(?P<path>.*)$", serve_media)]
