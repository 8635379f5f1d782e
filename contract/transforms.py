"""`preprocessing_transforms`: the image transforms a training may ask for, parsed and checked.

The API refuses a bad list when it is stored; the engine parses the same list when it prepares the
data, so both read this one parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRANSFORM_PARAMETERS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "resize": {"size": int, "width": int, "height": int},
    "center_crop": {"size": int, "width": int, "height": int},
    "random_crop": {"size": int, "width": int, "height": int},
    "horizontal_flip": {"p": (int, float)},
}
SIZE_MIN, SIZE_MAX = 16, 8192


class InvalidTransform(ValueError):
    """A transform list that cannot be used; the message names the first bad entry."""


@dataclass(frozen=True)
class Transform:
    type: str
    width: int | None = None
    height: int | None = None
    p: float = 0.5

    def size(self) -> tuple[int, int]:
        """Width and height of a resize or a crop (validate_transforms gives those both)."""
        if self.width is None or self.height is None:
            raise InvalidTransform(f"the {self.type} transform needs a width and a height")
        return self.width, self.height


def validate_transforms(raw: Any) -> list[Transform]:
    """Parse `preprocessing_transforms`; InvalidTransform naming the first bad entry."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidTransform(
            'preprocessing_transforms must be a list of objects such as {"type": "resize", "size": 512}'
        )
    parsed = []
    for index, entry in enumerate(raw):
        where = f"preprocessing_transforms[{index}]"
        if not isinstance(entry, dict):
            raise InvalidTransform(f'{where} must be an object with a "type"')
        kind = entry.get("type")
        if kind not in TRANSFORM_PARAMETERS:
            raise InvalidTransform(f"{where}: unknown transform {kind!r}; known: {', '.join(TRANSFORM_PARAMETERS)}")
        allowed = TRANSFORM_PARAMETERS[kind]
        for key, value in entry.items():
            if key == "type":
                continue
            if key not in allowed:
                raise InvalidTransform(f"{where}: {kind} takes {', '.join(allowed) or 'no options'}, not {key!r}")
            if isinstance(value, bool) or not isinstance(value, allowed[key]):
                raise InvalidTransform(f"{where}.{key} must be a number")
        if kind == "horizontal_flip":
            p = float(entry.get("p", 0.5))
            if not 0 <= p <= 1:
                raise InvalidTransform(f"{where}.p must be between 0 and 1")
            parsed.append(Transform(type=kind, p=p))
            continue
        width = entry.get("width", entry.get("size"))
        height = entry.get("height", entry.get("size"))
        if width is None or height is None:
            raise InvalidTransform(f'{where}: {kind} needs "size" or both "width" and "height"')
        if not (SIZE_MIN <= width <= SIZE_MAX and SIZE_MIN <= height <= SIZE_MAX):
            raise InvalidTransform(f"{where}: sizes must be between {SIZE_MIN} and {SIZE_MAX} pixels")
        parsed.append(Transform(type=kind, width=int(width), height=int(height)))
    return parsed
