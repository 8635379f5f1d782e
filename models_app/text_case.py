"""Field-name spelling: the public APIs accept both camelCase and snake_case."""

from __future__ import annotations

import re

CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z]+)")


def snake_case(name: str) -> str:
    """`assetIds` -> `asset_ids`, `modelID` -> `model_id`; snake_case names pass unchanged."""
    return CAMEL_BOUNDARY.sub(r"_\1", name).lower()
