"""README.md's fenced code blocks, for the tests that run them as shown."""

from __future__ import annotations

import re

from tests.servers import ROOT

# Its blocks are a project of its own, which tests/test_wheel.py builds.
OWN_PROJECT = "Add identity to your own Django project"


def readme_sections() -> dict[str, str]:
    """README.md's `## ` sections by title (what precedes the first one under "")."""
    parts = re.split(r"^## (.+)\n", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of TEXT in LANGUAGE, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
