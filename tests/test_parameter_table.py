"""One parameter table (contract/parameters.py) that every path reads: the engine's spec, the task's
columns, seed 003's serializer and the domain's choices all carry its defaults and values, and
neither side imports the other for them."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from contract import parameters as table
from contract.parameters import PARAMETERS, Parameter, default, effective_parameters, range_text
from models_app.api.training_tasks import TrainingTaskCreateSerializer
from models_app.models import TrainingTask
from training.engine.spec import TrainingSpec

ROOT = Path(__file__).resolve().parent.parent
# The spec's names for the parameters it calls differently.
SPEC_NAMES = {
    "captioning_strategy": "preprocessing_captioning_strategy",
    "captioning_prompt": "preprocessing_captioning_prompt",
}


def test_the_engine_spec_defaults_are_the_tables() -> None:
    checked = 0
    for spec_field in dataclasses.fields(TrainingSpec):
        name = SPEC_NAMES.get(spec_field.name, spec_field.name)
        if name not in PARAMETERS:
            continue
        if spec_field.default is dataclasses.MISSING:
            assert spec_field.default_factory() == default(name), name  # type: ignore[misc]
        else:
            assert spec_field.default == default(name), name
        checked += 1
    assert checked >= 45  # every lever the engine takes, not a handful


def test_the_task_columns_defaults_are_the_tables() -> None:
    columns = {field.name: field for field in TrainingTask._meta.get_fields() if hasattr(field, "default")}
    named = [name for name in PARAMETERS if name in columns and columns[name].has_default()]
    assert len(named) >= 14
    for name in named:
        assert columns[name].get_default() == default(name), name
    assert columns["total_steps"].get_default() == default("steps")


def test_seed_003_serializer_shows_the_tables_defaults() -> None:
    fields = TrainingTaskCreateSerializer().fields
    for name in ("training_type", "rank", "steps", "learning_rate", "bypass_guidance_embedding"):
        assert fields[name].default == default(name), name
    assert fields["preprocessing_captioning_strategy"].default == default("preprocessing_captioning_strategy")


def test_the_domains_choices_are_the_tables() -> None:
    assert tuple(TrainingTask.TrainingType.values) == table.TRAINING_TYPES
    assert tuple(TrainingTask.CaptioningStrategy.values) == table.CAPTIONING_STRATEGIES
    low, high = PARAMETERS["priority"].minimum, PARAMETERS["priority"].maximum
    assert TrainingTask.Priority.values == list(range(int(low or 0), int(high or 0) + 1))


def test_every_parameter_says_what_it_does_and_its_default_fits_its_own_rules() -> None:
    for name, spec in PARAMETERS.items():
        assert spec.help, f"{name} has no help text"
        value = spec.default
        if value is None:
            assert spec.nullable, name
            continue
        kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
        assert isinstance(value, kinds), name
        if spec.choices is not None:
            assert value in spec.choices, name
        if spec.minimum is not None and not isinstance(value, list | str):
            assert spec.minimum <= value <= (spec.maximum if spec.maximum is not None else value), name


def test_defaults_are_copied_so_a_caller_cannot_change_them() -> None:
    merged = effective_parameters({}, default_base_model="base")
    merged["sample_prompts"].append("changed")
    assert default("sample_prompts") == []
    assert effective_parameters({}, default_base_model="base")["sample_prompts"] == []


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (Parameter(int, 1, 1, 100_000), "1 to 100 000"),
        (Parameter(float, 0.1, 0, 10, exclusive_minimum=True), "above 0 to 10"),
        (Parameter(str, "a", choices=("a", "b")), "`a` / `b`"),
        (Parameter(bool, False), "on / off"),
        (Parameter(list, [], max_length=100), "up to 100 entries"),
    ],
)
def test_ranges_read_as_words(spec: Parameter, text: str) -> None:
    assert range_text(spec) == text


def imports_of(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_the_shared_facts_import_neither_side_nor_django_nor_torch() -> None:
    for path in (ROOT / "contract").glob("*.py"):
        for module in imports_of(path):
            top = module.split(".")[0]
            assert top not in {"models_app", "training", "django", "rest_framework", "torch", "diffusers"}, (
                f"{path.name} imports {module}"
            )


def test_the_domain_reads_no_training_module_outside_the_worker_entry_points() -> None:
    """models_app's services, selectors, table and API reach the engine's facts through contract/ only."""
    offenders = []
    for path in (ROOT / "models_app").rglob("*.py"):
        relative = path.relative_to(ROOT / "models_app")
        if relative.parts[0] in ("migrations", "management"):
            continue  # commands may drive the worker side (import_dataset, make_base_model, the demo)
        offenders += [f"{relative}: {m}" for m in imports_of(path) if m.split(".")[0] == "training"]
    assert offenders == []
