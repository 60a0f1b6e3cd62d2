"""Deterministic server-side names for advisory lock keys.

MySQL caps lock names at 64 characters and compares them case-insensitively;
MariaDB allows 192 bytes, compares case-sensitively and truncates at NUL. So the
caller's key is never sent as is: it is hashed (SHA-256 over its exact bytes) into a
short ASCII name, prefixed with a readable excerpt for operators. Distinct keys give
distinct names on every server; the same key always gives the same name.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import ConfigurationError

__all__ = ["LockKey", "lock_digest", "lock_name"]

LockKey = str | bytes | int

_UNSAFE = re.compile(rb"[^A-Za-z0-9_.:-]")
_EXCERPT = 20
_DIGEST_HEX = 40  # "ss:" + 20 + ":" + 40 = 64 characters at most


def lock_digest(key: LockKey) -> bytes:
    """SHA-256 of the key's exact bytes (str as UTF-8, int as its decimal text)."""
    return hashlib.sha256(b"safesync-lock:" + _key_bytes(key)).digest()


def lock_name(key: LockKey) -> str:
    """The ASCII lock name (at most 64 characters) used for ``key``."""
    excerpt = _UNSAFE.sub(b"_", _key_bytes(key)[:_EXCERPT]).decode("ascii")
    return f"ss:{excerpt}:{lock_digest(key).hex()[:_DIGEST_HEX]}"


def _key_bytes(key: LockKey) -> bytes:
    if isinstance(key, bool) or not isinstance(key, str | bytes | int):
        raise ConfigurationError(f"lock key must be str, bytes or int, not {type(key).__name__}")
    if isinstance(key, bytes):
        return key
    if isinstance(key, int):
        try:
            return str(key).encode("ascii")
        except ValueError:  # more digits than int -> str allows (sys.set_int_max_str_digits)
            raise ConfigurationError(
                f"integer lock key with {key.bit_length()} bits is too large; use a str or "
                "bytes key (for example a hash of it)"
            ) from None
    return key.encode("utf-8", "surrogatepass")
