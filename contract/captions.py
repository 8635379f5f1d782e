"""The trigger word in a caption: when a caption has it, and how it is added when it lacks it.

The engine adds the trigger word to every caption that lacks it when it prepares a training; the
admin's "add the trigger word" tool writes the same thing into the stored captions. Both read this
one rule, so a caption the tool leaves alone is one the engine leaves alone too.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[\w'-]+")


def has_trigger(caption: str, trigger_word: str) -> bool:
    """Whether the caption holds the trigger word as a word of its own, in any case."""
    return trigger_word.lower() in {word.lower() for word in _WORD.findall(caption)}


def trigger_prefixed(caption: str, trigger_word: str) -> str:
    """The caption with the trigger word in front, as the engine writes it."""
    return f"{trigger_word}, {caption}"


def with_trigger(caption: str, trigger_word: str) -> str:
    """The caption (whitespace collapsed) with the trigger word in front unless it already holds it; an
    empty caption is the trigger word alone."""
    caption = " ".join(caption.split())
    if not caption:
        return trigger_word
    if trigger_word and not has_trigger(caption, trigger_word):
        # The trigger word is what ties the LoRA to the subject at generation time: never lose it.
        return trigger_prefixed(caption, trigger_word)
    return caption
