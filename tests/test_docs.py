"""The documentation site: every Python and SQL block in docs/ is included from a file under
examples/ (which the suite runs) and the nav lists exactly the pages that exist. The strict
build itself is the ``docs`` nox session, part of CI."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CODE_LANGUAGES = {"python", "py", "python3", "py3", "pycon", "sql"}
RUFF_OFF = "<!-- fmt: off -->"
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
_INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^"]+?)(?::(?P<section>[A-Za-z0-9_-]+))?"\s*$')
_MARKER = re.compile(r"--8<--\s+\[(?P<kind>start|end):(?P<name>[A-Za-z0-9_-]+)\]")
_FROM = re.compile(r"^<!--\s*from\s+(?P<path>examples/\S+)\s*-->$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    lines: tuple[str, ...]


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_griffe" not in p.parts)


def _blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page."""
    blocks: list[Block] = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and not closing["info"]
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
            ):
                break
            body.append(lines[end])
            end += 1
        name = str(page.relative_to(ROOT))
        blocks.append(Block(name, index + 1, opening["info"].lower(), tuple(body)))
        index = end + 1
    return blocks


def _sections(path: Path) -> dict[str, tuple[int, int]]:
    """Section name -> (number of start markers, number of end markers) in a file."""
    counts: dict[str, tuple[int, int]] = {}
    for match in _MARKER.finditer(path.read_text()):
        starts, ends = counts.get(match["name"], (0, 0))
        if match["kind"] == "start":
            starts += 1
        else:
            ends += 1
        counts[match["name"]] = (starts, ends)
    return counts


def _include_problem(line: str, *, from_examples: bool = False) -> str | None:
    """Why a snippet include line does not resolve (or, with ``from_examples``, does not
    include from examples/), or None if it is fine."""
    match = _INCLUDE.match(line)
    if match is None:
        return f"not a snippet include: {line!r}"
    if from_examples and not match["path"].startswith("examples/"):
        return f"included from outside examples/: {match['path']}"
    target = ROOT / match["path"]
    if not target.is_file():
        return f"no such file: {match['path']}"
    section = match["section"]
    if section is not None and _sections(target).get(section) != (1, 1):
        return f"{match['path']} has no section {section!r} (one start and one end marker)"
    return None


def _inline_problem(page: Path, block: Block) -> str | None:
    """For a block right below ``<!-- from examples/X.py -->``: why its code is not a
    verbatim (dedented) slice of that file, or None if it is. "" if there is no marker."""
    above = page.read_text().splitlines()[block.line - 2].strip() if block.line > 1 else ""
    marker = _FROM.match(above)
    if marker is None:
        return ""
    source = ROOT / marker["path"]
    if not source.is_file():
        return f"no such file: {marker['path']}"
    wanted = textwrap.dedent("\n".join(block.lines)).strip("\n").splitlines()
    lines = source.read_text().splitlines()
    for start in range(len(lines) - len(wanted) + 1):
        window = textwrap.dedent("\n".join(lines[start : start + len(wanted)]))
        if window.strip("\n").splitlines() == wanted:
            return None
    return f"the code is not a verbatim slice of {marker['path']}"


def test_code_blocks_are_included_from_examples() -> None:
    """Every Python or SQL block in docs/ consists only of snippet includes of existing
    sections of files under examples/, or is marked ``<!-- from examples/X.py -->`` and
    is a verbatim slice of that file; every fenced block names its language."""
    problems = []
    for page in _pages():
        for block in _blocks(page):
            where = f"{block.page}:{block.line}"
            if not block.language:
                problems.append(f"{where}: a fenced block without a language")
            if block.language not in CODE_LANGUAGES:
                continue
            inline = _inline_problem(page, block)
            if inline is None:
                continue
            if inline:
                problems.append(f"{where}: {inline}")
                continue
            includes = [line for line in block.lines if line.strip()]
            if not includes:
                problems.append(f"{where}: an empty code block")
            for line in includes:
                problem = _include_problem(line, from_examples=True)
                if problem is not None:
                    problems.append(f"{where}: {problem}")
    assert problems == []


def test_code_pages_are_kept_from_the_formatter() -> None:
    """A page with Python or SQL blocks turns ruff's Markdown formatting off before them, or
    `ruff format` would rewrite each `--8<-- "..."` include as a Python expression."""
    problems = []
    for page in _pages():
        lines = page.read_text().splitlines()
        first = next(
            (block.line for block in _blocks(page) if block.language in CODE_LANGUAGES), None
        )
        if first is not None and RUFF_OFF not in lines[: first - 1]:
            problems.append(f"{page.relative_to(ROOT)}: no {RUFF_OFF} before line {first}")
    assert problems == []


def test_every_snippet_include_resolves() -> None:
    """Every snippet include anywhere in docs/ (a changelog page, an SQL file) names an
    existing file, and an existing section when it names one."""
    problems = []
    for page in _pages():
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.lstrip().startswith("--8<--"):
                problem = _include_problem(line)
                if problem is not None:
                    problems.append(f"{page.relative_to(ROOT)}:{number}: {problem}")
    assert problems == []


def test_example_sections_are_balanced() -> None:
    """In every file under examples/, each snippet section has one start and one end marker."""
    problems = []
    for path in sorted((ROOT / "examples").rglob("*")):
        if path.suffix not in {".py", ".sql"}:
            continue
        for name, counts in _sections(path).items():
            if counts != (1, 1):
                problems.append(f"{path.relative_to(ROOT)}: section {name!r} has {counts}")
    assert problems == []


def _nav_pages() -> list[str]:
    """The Markdown files named in mkdocs.yml's nav (read without a YAML parser)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = re.search(r"^nav:\n(?P<body>(?:[ \t]+.*\n?|\n)*)", text, re.M)
    assert nav is not None, "mkdocs.yml has no nav"
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav["body"], re.M)


def test_nav_lists_exactly_the_existing_pages() -> None:
    """The nav names only pages that exist under docs/, each once, and leaves none out."""
    listed = _nav_pages()
    existing = {str(page.relative_to(DOCS)) for page in _pages()}
    assert [page for page in listed if page not in existing] == []
    assert sorted({page for page in listed if listed.count(page) > 1}) == []
    assert sorted(existing - set(listed)) == []


def test_sql_files_match_the_library() -> None:
    """The DDL files under examples/sql/ are what Inbox/Outbox.create_sql render today."""
    from examples.queue_inbox_outbox_ddl import stale_files

    assert stale_files() == []
