"""MkDocs hooks (mkdocs.yml `hooks:`): the tables the code owns, written into the pages where a
`<!-- generated: module.function -->` line stands, so the docs never hold a copy that can drift."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

# MkDocs loads this file by path (and restores sys.path afterwards): the project's packages are imported from its
# root, put on the path when a table is generated.
ROOT = str(Path(__file__).resolve().parents[1])

# The generators a page may name: each returns a Markdown table from the code's own records.
GENERATORS = ("contract.parameters.markdown_table", "contract.families.markdown_table")
MARKER = re.compile(r"^<!-- generated: ([\w.]+) -->$", re.M)


def render(markdown: str) -> str:
    """The page with each marker replaced by its generated table; an unknown generator is an error."""

    def generated(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown table generator {name!r}; known: {', '.join(GENERATORS)}")
        module, function = name.rsplit(".", 1)
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        return str(getattr(importlib.import_module(module), function)())

    return MARKER.sub(generated, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return render(markdown)
