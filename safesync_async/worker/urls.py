"""Server URLs as they may be shown: passwords masked, and the secrets a log must hide."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["MASK", "database_url_for_display", "mask_urls_in", "redis_url_for_display", "secrets"]

MASK = "***"
_SECRET_QUERY_NAMES = frozenset({"password", "passwd", "pwd", "pass", "secret", "token"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# scheme://user:password@ anywhere in a text (error messages, log records)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(?P<tail>@)")


def database_url_for_display(url: str) -> str:
    """The database URL with its password (and password-like query values) masked."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return _opaque(url)
    shown = parsed.render_as_string(hide_password=True)
    return _mask_query(shown)


def redis_url_for_display(url: str) -> str:
    """The Redis URL with its password (``redis://:pw@host``, ``?password=pw``) masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
        netloc = parts.netloc
    except ValueError:
        return _opaque(url)
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        url = urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    return _mask_query(url)


def secrets(*urls: str | None) -> set[str]:
    """The passwords in ``urls``, as written and decoded, for masking in logs."""
    found: set[str] = set()
    for url in urls:
        if not url:
            continue
        try:
            parts = urlsplit(url)
            password = parts.password
        except ValueError:
            continue
        values = [password] if password else []
        values += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_QUERY_NAMES]
        for value in values:
            found.update({value, unquote(value), quote(unquote(value), safe="")})
    return {value for value in found if value}


def mask_urls_in(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it masked."""
    return _USERINFO.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)


def _mask_query(url: str) -> str:
    base, question, rest = url.partition("?")
    if not question:
        return url
    query, hash_mark, fragment = rest.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in _SECRET_QUERY_NAMES for k, _ in pairs):
        return url
    masked = [(k, MASK if k.lower() in _SECRET_QUERY_NAMES else v) for k, v in pairs]
    return f"{base}?{urlencode(masked, safe='*')}{hash_mark}{fragment}"


def _opaque(url: str) -> str:
    """An unparseable URL: only its scheme, never the rest (it may hold a password)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if _SCHEME.fullmatch(scheme):
        return f"{scheme}://{MASK} (unparseable URL)"
    return "(unparseable URL)"
