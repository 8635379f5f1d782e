"""The model form's training parameters, generated from the one parameter table (contract/parameters.py).

One field per parameter, in one section per `group` of the table, each showing its default, its range
and its meaning. An empty field means "the default": a model stores its overrides only, and clearing a
field removes its override. The widget's text becomes the value the API would receive (a number, a
boolean, a list), which the API's own `validate_parameters` then checks, so a refusal reads as the
API's and stands on the field it concerns. Nothing here names a parameter: a row added to the table is
a field added to the form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from django import forms
from django.conf import settings
from django.template.loader import render_to_string
from django.utils.html import escape
from django.utils.safestring import mark_safe

from contract.parameters import MULTILINE, PARAMETERS, Parameter, effective_parameters, range_text
from models_app.errors import InvalidInput
from models_app.input_rules import json_document
from models_app.training_parameters import validate_parameters

PREFIX = "parameter_"  # a form field's name: never one of the model's own columns
INTEGER = re.compile(r"[+-]?\d+")
DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def field_name(parameter: str) -> str:
    return PREFIX + parameter


def parameter_of(field: str | None) -> str | None:
    """The parameter a form field or a service's field path (`parameters.rank`, `parameters.x[0]`) names."""
    if field and field.startswith(PREFIX):
        return field[len(PREFIX) :]
    match = re.fullmatch(r"parameters\.(\w+)(\[\d+\])?", field or "")
    return match.group(1) if match else None


def is_parameter_field(field: str) -> bool:
    return field.startswith(PREFIX)


def kinds(spec: Parameter) -> tuple[type, ...]:
    return spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)


def as_html(text: str) -> str:
    """The table's text (its `code` in backticks, as the README shows it) for a page."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text)))


def as_plain(text: str) -> str:
    return text.replace("`", "")


class ParameterField(forms.Field):
    """One parameter: the widget's text in, the API's value out (None: not set, the default applies),
    refused with the API's message."""

    def __init__(self, parameter: str, spec: Parameter) -> None:
        self.parameter, self.spec = parameter, spec
        help_text = (
            f'{as_html(spec.help)} <span class="param-default">Default: {as_html(spec.default_text())}</span>'
            f' <span class="param-range">({as_html(range_text(spec))})</span>'
        )
        # The table's words are escaped by as_html; the admin shows a field's help as HTML.
        super().__init__(required=False, label=parameter, help_text=mark_safe(help_text), widget=self.make_widget())

    def make_widget(self) -> forms.Widget:
        spec, types = self.spec, kinds(self.spec)
        unset = f"default ({as_plain(spec.default_text())})"
        # A default the widget can show whole; a long one ("the model's own (512 SD 1.5, …)") is in the help.
        placeholder = as_plain(spec.default_text()) if len(spec.default_text()) <= 14 else "default"
        if bool in types:
            # Three states: not set (the default), on, off; an override of "off" is stored as such.
            return forms.Select(choices=[("", unset), ("true", "on"), ("false", "off")])
        if spec.choices is not None:
            return forms.Select(choices=[("", unset), *((str(choice), str(choice)) for choice in spec.choices)])
        if int in types or float in types:
            # A text box, not <input type=number>: a browser posts what it cannot read as a number ("1e") as
            # empty, which would silently drop the override instead of refusing it.
            mode = "numeric" if float not in types else "decimal"
            return forms.TextInput(attrs={"placeholder": placeholder, "inputmode": mode, "class": "param-number"})
        if list in types and spec.entries is str:
            return forms.Textarea(
                attrs={"rows": 3, "placeholder": "one per line (or a JSON list)", "class": "param-lines"}
            )
        if list in types:
            return forms.Textarea(attrs={"rows": 3, "placeholder": "a JSON list", "class": "param-json"})
        if self.parameter in MULTILINE:
            return forms.Textarea(attrs={"rows": 3, "placeholder": placeholder})
        return forms.TextInput(attrs={"placeholder": placeholder, "class": "vTextField"})

    def prepare_value(self, value: Any) -> Any:
        """The stored value (or the text posted back) as the widget shows it."""
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if (
            isinstance(value, list)
            and self.spec.entries is str
            and all(isinstance(item, str) and "\n" not in item for item in value)
        ):
            return "\n".join(value)  # entries that span lines are shown (and read back) as a JSON list
        if isinstance(value, list | dict):
            return json.dumps(value, indent=1)
        return str(value)

    def to_python(self, value: Any) -> Any:
        """What the API would receive. Text that is not of the parameter's kind goes on as text, for the
        API's check to refuse in its own words."""
        if value is None or not str(value).strip():
            return None
        text, types = str(value).strip(), kinds(self.spec)
        if bool in types:
            return {"true": True, "false": False}.get(text, text)
        if self.spec.choices is not None:
            return {str(choice): choice for choice in self.spec.choices}.get(text, text)
        if int in types or float in types:
            if INTEGER.fullmatch(text):
                return int(text)
            return float(text) if DECIMAL.fullmatch(text) else text
        if list in types and self.spec.entries is str and not text.startswith("["):
            return [line.strip() for line in text.splitlines() if line.strip()] or None
        if list in types:
            try:
                return json_document(text, field=self.parameter)
            except InvalidInput as exc:
                raise forms.ValidationError(exc.message) from exc
        return text

    def validate(self, value: Any) -> None:
        if value is None:
            return
        try:
            validate_parameters({self.parameter: value})
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from exc


def add_parameter_fields(form: forms.BaseForm, overrides: Mapping[str, Any]) -> None:
    """Give `form` a field per parameter of the table, showing the model's overrides (empty elsewhere)."""
    for parameter, spec in PARAMETERS.items():
        form.fields[field_name(parameter)] = ParameterField(parameter, spec)
        form.initial.setdefault(field_name(parameter), overrides.get(parameter))


def parameter_overrides(cleaned_data: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters set on the form: the model's overrides, every other one left to its default."""
    values = {parameter: cleaned_data.get(field_name(parameter)) for parameter in PARAMETERS}
    return {parameter: value for parameter, value in values.items() if value is not None}


def parameter_fieldsets(overrides: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A section per group of the table, in the table's order; the first open, and any holding an override."""
    groups: dict[str, list[str]] = {}
    for parameter, spec in PARAMETERS.items():
        groups.setdefault(spec.group, []).append(parameter)
    sections = []
    for index, (group, names) in enumerate(groups.items()):
        shown = index == 0 or any(overrides.get(name) is not None for name in names)
        options: dict[str, Any] = {
            "fields": [field_name(name) for name in names],
            "classes": [] if shown else ["collapse"],
        }
        if index == 0:
            options["description"] = (
                '<span id="parameters"></span>Training parameters, checked as the API checks them. An empty field uses the default shown '
                "under it; only what is set here is stored, and clearing a field removes it."
            )
        sections.append((f"Parameters: {group}", options))
    return sections


def effective_parameters_table(overrides: Mapping[str, Any]) -> str:
    """What a training started now would use: the defaults merged with the overrides, each row marked."""
    known = {name: value for name, value in overrides.items() if name in PARAMETERS}
    merged = effective_parameters(known, default_base_model=settings.TRAINING_DEFAULT_BASE_MODEL)
    rows = [
        {"name": name, "value": json.dumps(value), "set": known.get(name) is not None} for name, value in merged.items()
    ]
    return render_to_string("admin/models_app/cells/effective_parameters.html", {"rows": rows})
