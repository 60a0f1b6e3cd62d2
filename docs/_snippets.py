"""Code blocks of the README and the documentation, generated from the files the test
suite runs, so that every page shows its code wherever it is read (GitHub, PyPI, the
built site) and the code shown is code that runs.

A page marks each generated block with two HTML comments, invisible once rendered::

    <!-- snippet: examples/db_row_lock.py:process-order -->
    ```python
    ...written by this script...
    ```
    <!-- /snippet -->

A source is a file path relative to the repository root, optionally followed by
``:section``: the lines between ``# --8<-- [start:section]`` and
``# --8<-- [end:section]`` in that file, dedented. Without a section the whole file is
shown. Several sources, separated by spaces, are shown one after the other in one block.
Marker lines of other sections inside a section are left out. The block's language
follows the first source's suffix.

    python docs/_snippets.py            # rewrite every block from its sources
    python docs/_snippets.py --check    # change nothing; exit 1 if a block is stale or
                                        # a source (file or section) is missing

A fenced block holding only ``--8<-- "file:section"`` lines (the pymdownx.snippets
includes the pages used before) is converted into a marked block on the way.

Only the standard library is used, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROOT",
    "Snippet",
    "SnippetError",
    "convert_includes",
    "find_snippets",
    "main",
    "pages",
    "problems",
    "render_source",
    "rewrite",
    "section_counts",
]

ROOT = Path(__file__).resolve().parent.parent
OPEN = re.compile(r"^(?P<indent>[ \t]*)<!-- snippet: (?P<sources>\S.*?) -->[ \t]*$")
FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
INCLUDE = re.compile(r'^[ \t]*--8<--[ \t]+"(?P<source>[^"]+)"[ \t]*$')
CLOSE = re.compile(r"^[ \t]*<!-- /snippet -->[ \t]*$")
SECTION_MARKER = re.compile(r"--8<--\s+\[(?P<kind>start|end):(?P<name>[A-Za-z0-9_-]+)\]")
LANGUAGES = {".py": "python", ".sql": "sql", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


class SnippetError(Exception):
    """A marker that cannot be rendered: a missing file or section, an unclosed marker."""


@dataclass(frozen=True, slots=True)
class Snippet:
    """One marked block of a page: ``start`` and ``end`` are the 0-based line indexes of
    its opening and closing markers."""

    start: int
    end: int
    indent: str
    sources: tuple[str, ...]

    @property
    def language(self) -> str:
        path = self.sources[0].partition(":")[0]
        return LANGUAGES.get(Path(path).suffix, "text")


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown files that may hold snippets: the README and every page of docs/."""
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    docs = root / "docs"
    if docs.is_dir():
        found += sorted(p for p in docs.rglob("*.md") if "_griffe" not in p.parts)
    return found


def find_snippets(lines: Sequence[str]) -> list[Snippet]:
    """The marked blocks of a page, in order; SnippetError for an opening marker without
    its closing one, or a closing marker without an opening one."""
    found: list[Snippet] = []
    opened: tuple[int, str, tuple[str, ...]] | None = None
    fence: str | None = None  # the fence of the code block we are in, if any
    for index, line in enumerate(lines):
        fenced = FENCE.match(line)
        if fenced is not None:
            if fence is None:
                fence = fenced["fence"]
            elif fenced["fence"].startswith(fence) and not fenced["info"].strip():
                fence = None
            continue
        if fence is not None:
            continue  # a marker shown inside a code block is text, not a marker
        opening = OPEN.match(line)
        if opening is not None:
            if opened is not None:
                raise SnippetError(f"line {opened[0] + 1}: snippet marker not closed")
            opened = (index, opening["indent"], tuple(opening["sources"].split()))
        elif CLOSE.match(line):
            if opened is None:
                raise SnippetError(f"line {index + 1}: <!-- /snippet --> without an opening")
            found.append(Snippet(opened[0], index, opened[1], opened[2]))
            opened = None
    if opened is not None:
        raise SnippetError(f"line {opened[0] + 1}: snippet marker not closed")
    return found


def section_counts(text: str) -> dict[str, tuple[int, int]]:
    """Section name -> (number of start markers, number of end markers) in a source."""
    counts: dict[str, tuple[int, int]] = {}
    for match in SECTION_MARKER.finditer(text):
        starts, ends = counts.get(match["name"], (0, 0))
        if match["kind"] == "start":
            starts += 1
        else:
            ends += 1
        counts[match["name"]] = (starts, ends)
    return counts


def render_source(source: str, root: Path = ROOT) -> str:
    """The code a source names (``path`` or ``path:section``), without marker lines,
    dedented, without leading or trailing blank lines."""
    path, _, section = source.partition(":")
    target = (root / path).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        raise SnippetError(f"no such file: {path}")
    lines = target.read_text().splitlines()
    if section:
        if section_counts("\n".join(lines)).get(section) != (1, 1):
            raise SnippetError(f"{path} has no section {section!r} (one start, one end marker)")
        start = next(i for i, line in enumerate(lines) if _marks(line, "start", section))
        end = next(i for i, line in enumerate(lines) if _marks(line, "end", section))
        if end < start:
            raise SnippetError(f"{path}: section {section!r} ends before it starts")
        lines = lines[start + 1 : end]
    kept = [line.rstrip() for line in lines if SECTION_MARKER.search(line) is None]
    code = textwrap.dedent("\n".join(kept)).strip("\n")
    if not code.strip():
        raise SnippetError(f"{source} is empty")
    return code


def _marks(line: str, kind: str, name: str) -> bool:
    match = SECTION_MARKER.search(line)
    return match is not None and match["kind"] == kind and match["name"] == name


def _block(snippet: Snippet, root: Path) -> list[str]:
    """The lines between a snippet's markers: a fenced block of its sources' code."""
    code = "\n".join(render_source(source, root) for source in snippet.sources)
    ticks = max((len(run) for run in re.findall(r"`{3,}", code)), default=2)
    fence = "`" * max(3, ticks + 1)
    body = [f"{snippet.indent}{line}" if line else "" for line in code.splitlines()]
    return [f"{snippet.indent}{fence}{snippet.language}", *body, f"{snippet.indent}{fence}"]


def convert_includes(lines: Sequence[str]) -> list[str]:
    """Fenced blocks that hold only pymdownx.snippets includes (``--8<-- "file:name"``,
    what the pages used before) turned into empty snippet markers for :func:`rewrite`."""
    out: list[str] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            out.append(lines[index])
            index += 1
            continue
        end = index + 1
        sources = []
        while end < len(lines) and (include := INCLUDE.match(lines[end])) is not None:
            sources.append(include["source"])
            end += 1
        closing = FENCE.match(lines[end]) if end < len(lines) else None
        if sources and closing is not None and closing["fence"] == opening["fence"]:
            indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
            out += [f"{indent}<!-- snippet: {' '.join(sources)} -->", f"{indent}<!-- /snippet -->"]
            index = end + 1
            continue
        # any other fenced block is copied as it is, up to its closing fence
        out.append(lines[index])
        index += 1
        while index < len(lines):
            out.append(lines[index])
            fenced = FENCE.match(lines[index])
            index += 1
            if (
                fenced is not None
                and fenced["fence"].startswith(opening["fence"])
                and not fenced["info"].strip()
            ):
                break
    return out


def rewrite(text: str, root: Path = ROOT) -> str:
    """The page with every marked block regenerated, and blocks of snippet includes
    converted to marked blocks first; SnippetError if one cannot be generated."""
    lines = convert_includes(text.splitlines())
    out: list[str] = []
    done = 0
    for snippet in find_snippets(lines):
        try:
            block = _block(snippet, root)
        except SnippetError as exc:
            raise SnippetError(f"line {snippet.start + 1}: {exc}") from None
        out += [*lines[done : snippet.start + 1], *block]
        done = snippet.end
    out += lines[done:]
    return "\n".join(out) + ("\n" if text.endswith("\n") or not text else "")


def problems(files: Iterable[Path], root: Path = ROOT) -> list[str]:
    """What ``--check`` reports: pages whose blocks are stale or cannot be rendered."""
    found = []
    for page in files:
        name = _name(page, root)
        text = page.read_text()
        try:
            current = rewrite(text, root)
        except SnippetError as exc:
            found.append(f"{name}: {exc}")
            continue
        if current != text:
            found.append(f"{name}: generated code is stale (run `python docs/_snippets.py`)")
    return found


def _name(page: Path, root: Path) -> str:
    page = page.resolve()
    return str(page.relative_to(root.resolve()) if page.is_relative_to(root.resolve()) else page)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python docs/_snippets.py",
        description="Regenerate the code blocks of README.md and docs/ from their sources.",
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a block is stale"
    )
    parser.add_argument("files", nargs="*", type=Path, help="pages (default: all)")
    args = parser.parse_args(argv)
    files = [path.resolve() for path in args.files] or pages()
    if args.check:
        found = problems(files)
        for problem in found:
            print(problem, file=sys.stderr)
        return 1 if found else 0
    failed = 0
    for page in files:
        text = page.read_text()
        try:
            current = rewrite(text)
        except SnippetError as exc:
            print(f"{_name(page, ROOT)}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if current != text:
            page.write_text(current)
            print(f"updated {_name(page, ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
