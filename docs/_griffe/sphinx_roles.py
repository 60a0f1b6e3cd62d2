"""A griffe extension for the API reference.

The library's docstrings use Sphinx roles (:class:`DbSession`, :meth:`stop`) and ``::``
before literal blocks. mkdocstrings renders docstrings as Markdown, where roles would
show up verbatim. This extension rewrites them before rendering: a role becomes inline
code, and a link when its target is a public object of ``safesync_async`` (an entry of
``__all__``, or a documented public member of one) that the reference renders. Nothing
else is changed, and unresolved targets are never linked, so no link can break.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?P<kind>class|meth|func|attr|data|exc|mod|obj):`(?P<tilde>~?)(?P<target>[^`]+)`"
)
_CALLABLE_KINDS = {"meth", "func"}


class SphinxRoles(griffe.Extension):
    """Turn Sphinx roles into Markdown code spans or cross-references."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != "safesync_async":
            return
        exports: dict[str, str] = {}  # canonical path -> public path
        for export in pkg.exports or ():
            name = str(export)
            member = pkg.members.get(name)
            if member is None:
                continue
            try:
                exports[member.canonical_path] = f"{pkg.path}.{name}"
            except griffe.AliasResolutionError:
                continue
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, obj, pkg, exports)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))  # type: ignore[arg-type]
    return found


def _rewrite(text: str, owner: griffe.Object, pkg: griffe.Module, exports: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, target = match["kind"], match["target"]
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        if kind in _CALLABLE_KINDS:
            shown += "()"
        identifier = _public_identifier(kind, target, owner, pkg, exports)
        return f"[`{shown}`][{identifier}]" if identifier else f"`{shown}`"

    text = _ROLE.sub(replace, text)
    return re.sub(r"(\S)::\n", r"\1:\n", text)  # reST "text::" before a literal block


def _public_identifier(
    kind: str, target: str, owner: griffe.Object, pkg: griffe.Module, exports: dict[str, str]
) -> str | None:
    """The rendered identifier of the role's target, or None if it is not rendered."""
    if target.startswith(f"{pkg.path}."):
        candidates = [target]
    elif "." not in target and kind in {"meth", "attr"}:
        cls = owner if owner.is_class else owner.parent
        candidates = [f"{cls.path}.{target}"] if cls is not None and cls.is_class else []
    else:
        head, _, rest = target.partition(".")
        candidates = [f"{pkg.path}.{target}", f"{owner.module.path}.{target}"]
        public = pkg.members.get(head)
        if public is not None:
            try:
                candidates.insert(0, ".".join(filter(None, [public.canonical_path, rest])))
            except griffe.AliasResolutionError:
                pass
    for candidate in candidates:
        try:
            obj = pkg.modules_collection.get_member(candidate)
            canonical = obj.canonical_path
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue  # not an object of the package (e.g. asyncio.run): plain code
        if canonical in exports:
            return exports[canonical]
        parent, _, member = canonical.rpartition(".")
        if parent in exports and not member.startswith("_") and _documented(obj):
            return f"{exports[parent]}.{member}"
    return None


def _documented(obj: griffe.Object | griffe.Alias) -> bool:
    try:
        return obj.docstring is not None
    except griffe.AliasResolutionError:
        return False
