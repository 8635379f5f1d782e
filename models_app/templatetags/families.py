"""`{{ estimate.family|family_label }}`: a family's display name from its facts record, with its key."""

from __future__ import annotations

from django import template

from contract.families import FAMILY_LABELS

register = template.Library()


@register.filter
def family_label(family: str) -> str:
    label = FAMILY_LABELS.get(family)
    return f"{label} ({family})" if label else family
