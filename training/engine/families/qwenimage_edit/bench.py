"""Qwen-Image-Edit (2511) at its published size, for bench/gpu.py: Qwen-Image's transformer (the same 20 B
configuration) with 2511's `zero_cond_t`, trained on pairs of one reference image: the target's 4096 tokens and
the reference's 4096 at 1024 px, the instruction read with the image by Qwen2.5-VL (about 64 + 256 tokens)."""

from __future__ import annotations

from typing import Any

from training.engine.families.qwenimage.bench import ARCHITECTURES as QWEN_IMAGE

_QWEN = QWEN_IMAGE["qwenimage"]

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwenimage-edit": {
        **_QWEN,
        "family": "qwenimage-edit",
        "pipeline": "QwenImageEditPlusPipeline",
        "config": {**_QWEN["config"], "zero_cond_t": True},
        "prompts": {"prompt_embeds": (320, 3584), "text_mask": (320,)},
        "sources": 1,
        "tiny": {**_QWEN["tiny"], "config": {**_QWEN["tiny"]["config"], "zero_cond_t": True}},
        "variants": [
            ("default", {}),
            ("no compile", {"compile": "off"}),
            ("fp8 base + checkpointing", {"quantize_base": "fp8", "gradient_checkpointing": True}),
            ("nf4 base + checkpointing", {"quantize_base": "nf4", "gradient_checkpointing": True}),
            ("nf4 base + 30 blocks swapped", {"quantize_base": "nf4", "swap_blocks": 30}),
        ],
    },
}
