"""A model family lives in one place: its facts record (contract/families.py) and its engine folder
(training/engine/families/<folder>/). These checks keep every family complete there, and every other module
free of family names, so that a new family is added without touching anything else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench import gpu
from contract.families import (
    FAMILIES,
    FAMILY_KEYS,
    PIPELINE_FAMILIES,
    family_facts,
    guess_family_from_name,
)
from training.engine.families import family_class, family_classes, family_module, family_of_pipeline
from training.engine.testing import tiny_model

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass

ROOT = Path(__file__).resolve().parents[2]


def test_every_facts_record_has_its_engine_class_and_nothing_else_does() -> None:
    assert list(family_classes()) == list(FAMILY_KEYS)
    for key, cls in family_classes().items():
        assert cls.name == key and cls.facts() is family_facts(key)
        assert cls.denoiser_key == family_facts(key).denoiser, key


@pytest.mark.parametrize("family", FAMILY_KEYS)
def test_every_family_has_a_tiny_model_with_learning_runs_and_a_comfyui_map_where_comfyui_runs_it(family: str) -> None:
    model = tiny_model(family)
    assert model.learning.steps > 0 and model.learning.learning_rate > 0
    assert callable(model.build)
    if family_facts(family).comfyui:  # a family ComfyUI cannot run has no names to map
        assert hasattr(family_module(family, "comfyui"), "lora_names")


def test_every_family_but_kontext_is_benchmarked_at_its_published_size() -> None:
    benchmarked = {spec["family"] for spec in gpu.architectures().values()}
    # FLUX.1 Kontext's transformer is FLUX.1 [dev]'s (the source tokens ride along): FLUX.1's rows measure it.
    assert set(FAMILY_KEYS) - benchmarked == {"flux-kontext"}


def test_each_pipeline_class_names_one_family() -> None:
    assert len(PIPELINE_FAMILIES) == sum(len(facts.pipelines) for facts in FAMILIES)
    for pipeline, family in PIPELINE_FAMILIES.items():
        fake = type(pipeline, (), {})()
        assert family_of_pipeline(fake) is family_class(family)


@pytest.mark.parametrize(
    ("hub_id", "family"),
    [
        ("runwayml/stable-diffusion-v1-5", "sd15"),
        ("stabilityai/stable-diffusion-xl-base-1.0", "sdxl"),
        ("black-forest-labs/FLUX.1-dev", "flux"),
        ("black-forest-labs/FLUX.1-Kontext-dev", "flux-kontext"),
        ("stabilityai/stable-diffusion-3.5-large", "sd3"),
        ("lodestones/Chroma1-HD", "chroma"),
        ("Tongyi-MAI/Z-Image-Turbo", "zimage"),
        ("Qwen/Qwen-Image", "qwenimage"),
        ("Qwen/Qwen-Image-Edit-2509", "qwenimage-edit"),
        ("Qwen/Qwen-Image-Edit-2511", "qwenimage-edit"),
        ("Qwen/Qwen-Image-2.1", "qwenimage21"),
        ("black-forest-labs/FLUX.2-klein-4B", "flux2-klein"),
        ("black-forest-labs/FLUX.2-dev", "flux2"),
        ("HiDream-ai/HiDream-I1-Full", "hidream"),
        ("someone/unknown-model", "flux"),  # the fallback
    ],
)
def test_a_hub_id_is_estimated_as_the_family_its_name_matches_most_of(hub_id: str, family: str) -> None:
    assert guess_family_from_name(hub_id) == family


def production_modules() -> list[Path]:
    """Every Python module of the product outside the families' own homes (and migrations)."""
    modules = []
    for top in ("models_app", "training", "config", "contract"):
        for path in (ROOT / top).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(("training/engine/families/", "contract/", "models_app/migrations/")):
                continue
            modules.append(path)
    return modules


def test_no_module_outside_the_families_homes_names_a_family() -> None:
    named = []
    for path in production_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in FAMILY_KEYS:
                named.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not named, "family keys belong in contract/families.py and the family's folder:\n" + "\n".join(named)


def test_the_engine_imports_nothing_from_the_worker_package() -> None:
    imports = []
    for path in (ROOT / "training" / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith(("training.", "models_app", "config", "django")) and not name.startswith(
                    "training.engine"
                ):
                    imports.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not imports, imports
