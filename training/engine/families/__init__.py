"""The model families the engine trains: one folder each (training/engine/families/<folder>/), holding its
`Family` subclasses (`family.py`, listed in the package's `FAMILIES`), its tiny test model (`tiny.py`), its
published configuration for the GPU benchmark (`bench.py`) and, where it has one, the names ComfyUI's
loader reads for it (`comfyui.py`). The registry below finds the folders by themselves: adding a family
edits no file outside its folder and its facts record (contract/families.py)."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType
from typing import Any

from contract.families import FAMILY_KEYS, PIPELINE_FAMILIES
from training.engine.errors import EngineError
from training.engine.families.base import Family


@cache
def family_classes() -> dict[str, type[Family]]:
    """Every family class, by family key, in the facts registry's order."""
    found: dict[str, type[Family]] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            package = importlib.import_module(f"{__name__}.{module.name}")
            for cls in package.FAMILIES:
                found[cls.name] = cls
    unknown = sorted(set(found) - set(FAMILY_KEYS))
    if unknown:
        raise EngineError(f"family folders define {', '.join(unknown)}, which contract/families.py has no record of")
    return {key: found[key] for key in FAMILY_KEYS if key in found}


def family_class(name: str) -> type[Family]:
    try:
        return family_classes()[name]
    except KeyError as exc:
        raise EngineError(f"family {name} cannot be trained; supported: {', '.join(family_classes())}") from exc


def family_of_pipeline(pipeline: Any) -> type[Family]:
    """The family class of a loaded diffusers pipeline, by its class."""
    name = type(pipeline).__name__
    if name not in PIPELINE_FAMILIES:
        raise EngineError(f"a {name} is not a pipeline of any family this engine trains")
    return family_class(PIPELINE_FAMILIES[name])


def family_module(name: str, part: str) -> ModuleType:
    """A module of a family's folder: `tiny`, `bench` or `comfyui` (ModuleNotFoundError where it has none)."""
    package = family_class(name).__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{part}")


__all__ = ["Family", "family_class", "family_classes", "family_module", "family_of_pipeline"]
