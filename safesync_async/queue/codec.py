"""Codecs: how a payload is stored in a stream entry's fields.

The default, :class:`JsonCodec`, stores JSON in one field named ``data``, exactly as the
synchronous seed library does, so streams written by existing producers are consumed
unchanged. Other fields of an entry (an idempotency key, trace context) are metadata and
are not the codec's business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from ..errors import MessageDecodeError, MessageEncodeError

__all__ = ["DATA_FIELD", "Codec", "JsonCodec"]

P = TypeVar("P")
DATA_FIELD = b"data"


class Codec(Protocol[P]):
    """Encodes a payload to entry fields and decodes it back."""

    def encode(self, payload: P) -> dict[bytes, bytes]:
        """Entry fields for ``payload``."""
        ...

    def decode(self, fields: Mapping[bytes, bytes]) -> P:
        """The payload of an entry; raise :class:`MessageDecodeError` if impossible."""
        ...


class JsonCodec:
    """JSON (UTF-8) in the field ``data``; any JSON value is a valid payload."""

    def encode(self, payload: Any) -> dict[bytes, bytes]:
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise MessageEncodeError(f"payload is not JSON-serialisable: {exc}") from exc
        return {DATA_FIELD: text.encode("utf-8")}

    def decode(self, fields: Mapping[bytes, bytes]) -> Any:
        raw = fields.get(DATA_FIELD)
        if raw is None:
            present = sorted(k.decode("utf-8", "replace") for k in fields)
            raise MessageDecodeError(f"entry has no 'data' field (fields: {present})")
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise MessageDecodeError(f"'data' is not valid UTF-8: {exc}") from exc
        except RecursionError as exc:
            raise MessageDecodeError("'data' is JSON nested too deeply to decode") from exc
        except ValueError as exc:
            raise MessageDecodeError(f"'data' is not valid JSON: {exc}") from exc
