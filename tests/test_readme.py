"""The README's Python code blocks are real: each is a verbatim slice of a file under
examples/, which the test suite runs."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _blocks(markdown: str) -> list[str]:
    return [
        textwrap.dedent(b).strip("\n") for b in re.findall(r"```python\n(.*?)```", markdown, re.S)
    ]


def _contains(source: str, block: str) -> bool:
    lines, wanted = source.splitlines(), block.splitlines()
    for start in range(len(lines) - len(wanted) + 1):
        window = textwrap.dedent("\n".join(lines[start : start + len(wanted)]))
        if window.strip("\n") == block:
            return True
    return False


def test_readme_code_comes_from_examples() -> None:
    """Every ```python block of README.md appears, dedented, in some examples/*.py."""
    sources = [p.read_text() for p in sorted((ROOT / "examples").glob("*.py"))]
    blocks = _blocks((ROOT / "README.md").read_text())
    assert blocks
    missing = [b for b in blocks if not any(_contains(s, b) for s in sources)]
    assert missing == []
