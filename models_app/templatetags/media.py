"""`{{ file|media_url }}`: a stored file's signed URL in a template (see models_app.media_access)."""

from __future__ import annotations

from typing import Any

from django import template

from models_app.media_access import media_url as signed_media_url

register = template.Library()


@register.filter
def media_url(file: Any) -> str:
    return signed_media_url(file, absolute=False) if file else ""
