"""The README works where it is read: on PyPI, which renders it without the repository
around it, every link is absolute, and links into the repository name files (and
headings) that exist. Its code blocks are generated from examples/ like the pages of
docs/ (tests/test_docs.py checks both). The package metadata's URLs resolve too."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = "https://github.com/safesync/safesync_async"
_INLINE = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_DEFINITION = re.compile(r"^ {0,3}\[(?P<label>[^\]]+)\]:\s*(?P<target>\S+)", re.M)
_REFERENCE = re.compile(r"\[(?P<text>[^\]]+)\]\[(?P<label>[^\]]*)\]")
_AUTOLINK = re.compile(r"<(?P<target>[a-z]+://[^>\s]+)>")
_HREF = re.compile(r"""(?:href|src)=["'](?P<target>[^"']+)["']""")
_FENCED = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.M | re.S)


def _prose(markdown: str) -> str:
    """The Markdown without its fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]+`", "", _FENCED.sub("", markdown))


def links(markdown: str) -> list[str]:
    """Every link target of a Markdown text: inline links and images, reference
    definitions, autolinks and HTML href/src attributes."""
    prose = _prose(markdown)
    found = [m["target"] for m in _INLINE.finditer(prose)]
    found += [m["target"] for m in _DEFINITION.finditer(prose)]
    found += [m["target"] for m in _AUTOLINK.finditer(prose)]
    found += [m["target"] for m in _HREF.finditer(prose)]
    return found


def undefined_references(markdown: str) -> list[str]:
    """Reference-style links whose label has no definition (shown as plain text)."""
    prose = _prose(markdown)
    defined = {m["label"].lower() for m in _DEFINITION.finditer(prose)}
    used = [(m["label"] or m["text"]).lower() for m in _REFERENCE.finditer(prose)]
    return sorted({label for label in used if label not in defined})


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCED.sub("", path.read_text()), re.M)
    return {_slug(heading) for heading in headings}


def link_problems(targets: list[str], root: Path = ROOT) -> list[str]:
    """Why each link would break on PyPI: relative, or naming a file, directory or
    heading of the repository that does not exist."""
    problems = []
    for target in targets:
        if target.startswith("mailto:"):
            continue
        if not re.match(r"https?://", target):
            problems.append(f"not absolute: {target}")
            continue
        if not target.startswith(REPOSITORY + "/"):
            continue
        match = re.fullmatch(
            rf"{re.escape(REPOSITORY)}/(?P<kind>blob|tree)/main/(?P<path>[^#?]+)(?:#(?P<anchor>.+))?",
            target,
        )
        if match is None:
            if not re.fullmatch(rf"{re.escape(REPOSITORY)}/(issues|pulls|releases)/?", target):
                problems.append(f"not a file on the main branch: {target}")
            continue
        path = root / match["path"]
        is_file = match["kind"] == "blob"
        if not (path.is_file() if is_file else path.is_dir()):
            problems.append(f"no such {'file' if is_file else 'directory'}: {target}")
        elif match["anchor"] and path.suffix == ".md" and match["anchor"] not in _anchors(path):
            problems.append(f"no heading #{match['anchor']} in {match['path']}: {target}")
    return problems


def test_readme_links_are_absolute_and_resolve() -> None:
    """Every README link is absolute; those into the repository name an existing file
    (or directory, or heading) on the main branch; every reference link is defined."""
    readme = (ROOT / "README.md").read_text()
    targets = links(readme)
    assert len(targets) > 20
    assert link_problems(targets) == []
    assert undefined_references(readme) == []


def test_package_urls_resolve() -> None:
    """The URLs in pyproject.toml's [project.urls] are absolute, and those into the
    repository name paths that exist."""
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert {"Documentation", "Changelog", "Source"} <= set(urls)
    assert link_problems(list(urls.values())) == []


def test_broken_links_are_reported() -> None:
    """Relative links, missing files, wrong kinds, missing headings and undefined
    references are each caught (the checks above can fail)."""
    markdown = f"""
[relative](docs/sessions.md) and [missing]({REPOSITORY}/blob/main/docs/nothing.md)
[tree as blob]({REPOSITORY}/blob/main/docs) [a heading]({REPOSITORY}/blob/main/docs/occ.md#nope)
[good]({REPOSITORY}/blob/main/docs/occ.md#retry_transaction) [undefined][nowhere]
<a href="examples/demo.py">html</a>

```markdown
[inside a code block](ignored.md)
```

[defined]: ../LICENSE
"""
    assert link_problems(links(markdown)) == [
        "not absolute: docs/sessions.md",
        f"no such file: {REPOSITORY}/blob/main/docs/nothing.md",
        f"no such file: {REPOSITORY}/blob/main/docs",
        f"no heading #nope in docs/occ.md: {REPOSITORY}/blob/main/docs/occ.md#nope",
        "not absolute: ../LICENSE",
        "not absolute: examples/demo.py",
    ]
    assert undefined_references(markdown) == ["nowhere"]


def test_license_ships_with_the_package() -> None:
    """The LICENSE file exists, is the MIT license the metadata declares, and is listed
    in license-files so that wheels and sdists carry it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
