"""The model form's training parameters: a field per row of the parameter table (contract/parameters.py),
made from it and checked by the API's own validation; a model stores its overrides only. Read and posted
as staff do, through Django's test client."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.utils.html import escape

from contract.parameters import PARAMETERS, Parameter, range_text
from models_app.admin_parameters import as_html, field_name
from models_app.models import Membership, Model
from models_app.services.accounts import membership_set
from tests.factories import ModelFactory, TeamFactory, UserFactory
from tests.helpers import api_client_for
from tests.models_app.admin.test_forms import NO_TASKS, form_errors, model_form, url

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    """A plain staff member, a `member` of one team: the role is the only grant."""
    user = UserFactory(is_staff=True)
    client.team = TeamFactory()
    membership_set(team=client.team, user=user, role=Membership.Role.MEMBER)
    client.force_login(user)
    return client


def page_of(staff, model: Model) -> str:
    response = staff.get(url("models_app_model_change", model.pk))
    assert response.status_code == 200
    return response.content.decode()


def shown(model: Model) -> dict[str, Any]:
    """Every parameter field as the change form shows it for `model` (what a browser posts back untouched)."""
    values = {}
    for parameter, spec in PARAMETERS.items():
        value = model.parameters.get(parameter)
        if isinstance(value, bool):
            values[field_name(parameter)] = "true" if value else "false"
        elif isinstance(value, list) and spec.entries is str and not any("\n" in item for item in value):
            values[field_name(parameter)] = "\n".join(value)
        elif isinstance(value, list):
            values[field_name(parameter)] = json.dumps(value)
        else:
            values[field_name(parameter)] = "" if value is None else str(value)
    return values


def post(staff, model: Model, **parameters: str):
    """Save the change form with these parameter fields changed (the others as shown)."""
    changed = {field_name(name): value for name, value in parameters.items()}
    return staff.post(url("models_app_model_change", model.pk), model_form(model, **{**shown(model), **changed}))


def stored(model: Model) -> dict[str, Any]:
    return Model.objects.get(pk=model.pk).parameters


def test_every_parameter_has_a_field_with_its_default_range_and_meaning_in_its_groups_section(staff) -> None:
    model = ModelFactory(team=staff.team)
    response = staff.get(url("models_app_model_change", model.pk))
    page = response.content.decode()
    form = response.context["adminform"].form
    for parameter, spec in PARAMETERS.items():
        assert field_name(parameter) in form.fields, parameter
        assert f'name="{field_name(parameter)}"' in page, parameter
        assert as_html(spec.help) in page, parameter
        assert f"Default: {as_html(spec.default_text())}" in page, parameter
        assert as_html(range_text(spec)) in page, parameter
    sections = {name for name, _ in response.context["adminform"].fieldsets}
    assert {f"Parameters: {spec.group}" for spec in PARAMETERS.values()} <= sections
    # Widgets by kind: choices and on/off/default as selects, numbers with their bounds, prompts one per line.
    assert '<select name="parameter_optimizer"' in page and '<option value="prodigy">' in page
    assert '<select name="parameter_ema"' in page and '<option value="" selected>default (off)</option>' in page
    assert 'name="parameter_rank"' in page and 'inputmode="numeric"' in page  # its range is in the help
    assert '<textarea name="parameter_sample_prompts"' in page and 'placeholder="one per line (or a JSON list)"' in page


def test_a_bad_value_is_refused_on_its_field_with_the_apis_message_and_nothing_changes(staff) -> None:
    model = ModelFactory(team=staff.team, parameters={"steps": 500})
    api = api_client_for(staff.team)
    for parameter, value, typed in (
        ("rank", 0, "0"),
        ("rank", "many", "many"),
        ("rank", 1.5, "1.5"),
        ("optimizer", "sgd", "sgd"),
        ("huber_delta", 0, "0"),
        ("webhook_url", "http://10.0.0.1/hook", "http://10.0.0.1/hook"),
        ("preprocessing_transforms", [{"type": "blur"}], '[{"type": "blur"}]'),
    ):
        refused = api.patch(f"/v1/models/{model.public_id}", {"parameters": {parameter: value}}, format="json")
        assert refused.status_code == 400, (parameter, refused.content)
        message = refused.json()["detail"].removeprefix(f"parameters.{parameter}: ")
        response = post(staff, model, **{parameter: typed})
        assert form_errors(response) == {field_name(parameter): [message]}, parameter
        assert escape(message) in response.content.decode()
        assert stored(model) == {"steps": 500}


def test_several_bad_values_are_each_refused_on_their_own_field(staff) -> None:
    model = ModelFactory(team=staff.team)
    response = post(staff, model, steps="0", ema="maybe", preprocessing_transforms="[{")
    errors = form_errors(response)
    assert errors["parameter_steps"] == ["steps must be at least 1; got 0"]
    assert errors["parameter_ema"] == ["ema must be a boolean, got str"]
    assert errors["parameter_preprocessing_transforms"][0].startswith("preprocessing_transforms is not valid JSON")
    assert stored(model) == {}


def test_only_what_is_set_is_stored_with_its_type(staff) -> None:
    model = ModelFactory(team=staff.team)
    response = post(
        staff,
        model,
        steps="2000",
        learning_rate="0.0005",
        lora_alpha="8",
        optimizer="prodigy",
        ema="false",  # an explicit "off" is an override too: the default stays free to change
        gradient_checkpointing="true",
        sample_prompts="zxq, a red circle\n\n  zxq, a blue square  \n",
        preprocessing_transforms='[{"type": "resize", "size": 768}]',
        prior_preservation_class=" person ",
    )
    assert response.status_code == 302
    assert stored(model) == {
        "steps": 2000,
        "learning_rate": 0.0005,
        "lora_alpha": 8,
        "optimizer": "prodigy",
        "ema": False,
        "gradient_checkpointing": True,
        "sample_prompts": ["zxq, a red circle", "zxq, a blue square"],
        "preprocessing_transforms": [{"type": "resize", "size": 768}],
        "prior_preservation_class": "person",
    }
    # Saved again untouched, the page's values are the same overrides.
    model.refresh_from_db()
    assert post(staff, model).status_code == 302
    assert stored(model) == model.parameters


def test_numbers_are_plain_text_boxes_so_what_a_browser_cannot_read_is_refused_not_dropped(staff) -> None:
    model = ModelFactory(team=staff.team, parameters={"learning_rate": 0.0005})
    page = page_of(staff, model)
    assert 'type="number"' not in page  # a browser posts an unreadable number input as empty
    response = post(staff, model, learning_rate="1e")
    assert form_errors(response) == {"parameter_learning_rate": ["learning_rate must be a number, got str"]}
    assert stored(model) == {"learning_rate": 0.0005}


def test_prompts_that_span_lines_survive_a_save_as_a_json_list(staff) -> None:
    prompts = ["zxq, a red circle\non a table", "zxq, a cat"]
    model = ModelFactory(team=staff.team, parameters={"sample_prompts": prompts})
    page = page_of(staff, model)
    assert escape(json.dumps(prompts, indent=1)) in page
    assert post(staff, model).status_code == 302
    assert stored(model) == {"sample_prompts": prompts}


def test_clearing_a_field_removes_its_override(staff) -> None:
    model = ModelFactory(
        team=staff.team, parameters={"steps": 2000, "rank": 8, "ema": True, "sample_prompts": ["zxq, a cat"]}
    )
    page = page_of(staff, model)
    assert 'value="2000"' in page and "zxq, a cat</textarea>" in page
    assert '<option value="true" selected>on</option>' in page
    response = post(staff, model, rank="", ema="", sample_prompts="")
    assert response.status_code == 302
    assert stored(model) == {"steps": 2000}


def test_the_add_form_stores_the_overrides_given(staff) -> None:
    new = {"name": "Fresh", "team": staff.team.pk, "type": Model.Type.SUBJECT, "trigger_word": "zxq", **NO_TASKS}
    response = staff.post(url("models_app_model_add"), {**new, "parameter_rank": "4"})
    assert response.status_code == 302
    assert Model.objects.get(name="Fresh").parameters == {"rank": 4}


def test_a_parameter_added_to_the_table_is_on_the_form_with_no_other_change(staff, monkeypatch) -> None:
    lever = Parameter(int, 3, 0, 10, help="a lever only this test knows", group="Experimental levers")
    monkeypatch.setitem(PARAMETERS, "new_lever", lever)
    model = ModelFactory(team=staff.team)
    page = page_of(staff, model)
    assert 'name="parameter_new_lever"' in page and "a lever only this test knows" in page
    assert "Parameters: Experimental levers" in page and "Default: 3" in page
    assert form_errors(post(staff, model, new_lever="11")) == {
        "parameter_new_lever": ["new_lever must be at most 10; got 11"]
    }
    assert post(staff, model, new_lever="7").status_code == 302
    assert stored(model) == {"new_lever": 7}


def test_the_effective_parameters_and_the_overrides_are_shown(staff, settings) -> None:
    model = ModelFactory(team=staff.team, parameters={"steps": 2000, "optimizer": "prodigy"})
    page = page_of(staff, model)
    effective = page[page.index('id="effective-parameters"') :]
    assert "<td><code>steps</code></td><td><code>2000</code></td><td>set on this model</td>" in effective
    assert "<td><code>rank</code></td><td><code>16</code></td><td>default</td>" in effective
    assert "<td><code>learning_rate</code></td><td><code>1.0</code></td><td>default</td>" in effective  # prodigy's
    assert f"<code>{escape(json.dumps(settings.TRAINING_DEFAULT_BASE_MODEL))}</code>" in effective
    workspace = page[page.index('id="parameter-overrides"') :]
    assert "<code>steps</code>: <code>2000</code>" in workspace
    # The sections with an override are open; the others folded.
    fieldsets = dict(page_response_fieldsets(staff, model))
    assert "collapse" not in fieldsets["Parameters: Training"]["classes"]
    assert "collapse" in fieldsets["Parameters: Weight averaging"]["classes"]


def page_response_fieldsets(staff, model: Model) -> list[tuple[str, dict[str, Any]]]:
    return staff.get(url("models_app_model_change", model.pk)).context["adminform"].fieldsets
