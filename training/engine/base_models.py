"""The families this engine trains, on top of the shared family facts (contract/families.py)."""

from __future__ import annotations

from contract.families import (
    SUPPORTED_FAMILIES,
    UnknownBaseModel,
    detect_family,
)
from training.engine.errors import EngineError

__all__ = ["SUPPORTED_FAMILIES", "resolve_family"]


def resolve_family(base_model: str) -> str:
    """The family of a base model this engine can train; EngineError naming the problem otherwise."""
    try:
        family = detect_family(base_model)
    except UnknownBaseModel as exc:
        raise EngineError(str(exc)) from exc
    if family not in SUPPORTED_FAMILIES:
        raise EngineError(
            f"base model {base_model!r} is of the {family} family, which this engine does not "
            f"train yet; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return family
