"""One adapter per model family: how to encode images and captions, and what the denoiser's loss is."""

from __future__ import annotations

from training.engine.errors import EngineError
from training.engine.families.base import Family
from training.engine.families.chroma import ChromaFamily
from training.engine.families.flux import FluxFamily, FluxKontextFamily
from training.engine.families.flux2 import Flux2Family, Flux2KleinFamily
from training.engine.families.hidream import HiDreamFamily
from training.engine.families.qwenimage import QwenImageFamily
from training.engine.families.sd import SD15Family, SDXLFamily
from training.engine.families.sd3 import SD3Family
from training.engine.families.zimage import ZImageFamily

FAMILY_CLASSES: dict[str, type[Family]] = {
    "sd15": SD15Family,
    "sdxl": SDXLFamily,
    "flux": FluxFamily,
    "flux-kontext": FluxKontextFamily,
    "sd3": SD3Family,
    "chroma": ChromaFamily,
    "zimage": ZImageFamily,
    "qwenimage": QwenImageFamily,
    "flux2-klein": Flux2KleinFamily,
    "flux2": Flux2Family,
    "hidream": HiDreamFamily,
}


def family_class(name: str) -> type[Family]:
    try:
        return FAMILY_CLASSES[name]
    except KeyError as exc:
        raise EngineError(f"family {name} cannot be trained; supported: {', '.join(FAMILY_CLASSES)}") from exc


__all__ = ["FAMILY_CLASSES", "Family", "family_class"]
