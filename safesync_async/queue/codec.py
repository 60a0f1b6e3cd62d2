"""Codecs: how a payload is stored in a stream entry's fields.

The default, :class:`JsonCodec`, stores JSON in one field named ``data``, exactly as the
synchronous seed library does, so streams written by existing producers are consumed
unchanged. Other fields of an entry (an idempotency key, trace context) are metadata and
are not the codec's business.

``JsonCodec(Model)`` types the payload: entries are validated into ``Model`` (a pydantic
model, a dataclass, a ``TypedDict``: anything pydantic can validate; the ``pydantic``
extra) when they are consumed, and producers may publish ``Model`` instances.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar, overload

from ..errors import (
    ConfigurationError,
    MessageDecodeError,
    MessageEncodeError,
    PayloadValidationError,
)

__all__ = ["DATA_FIELD", "Codec", "JsonCodec"]

P = TypeVar("P")
M = TypeVar("M")
DATA_FIELD = b"data"
_SHOWN_ERRORS = 10


class Codec(Protocol[P]):
    """Encodes a payload to entry fields and decodes it back."""

    def encode(self, payload: P) -> dict[bytes, bytes]:
        """Entry fields for ``payload``."""
        ...

    def decode(self, fields: Mapping[bytes, bytes]) -> P:
        """The payload of an entry; raise :class:`MessageDecodeError` if impossible."""
        ...


class JsonCodec(Generic[P]):
    """JSON (UTF-8) in the field ``data``.

    ``JsonCodec()`` takes any JSON value (and encodes pydantic models and dataclasses as
    the objects they dump to). ``JsonCodec(Model)`` validates every decoded payload into
    ``Model`` and encodes ``Model`` instances (or anything that validates into one): a
    payload that fails raises :class:`PayloadValidationError`, which a consumer
    dead-letters at once with the validation errors.
    """

    @overload
    def __init__(self: JsonCodec[Any]) -> None: ...

    @overload
    def __init__(self: JsonCodec[M], model: type[M]) -> None: ...

    def __init__(self, model: type[Any] | None = None) -> None:
        self.model = model
        self._adapter = _adapter(model) if model is not None else None  # type: ignore[arg-type]

    def encode(self, payload: P) -> dict[bytes, bytes]:
        adapter = self._adapter
        try:
            if adapter is not None:
                data = adapter.dump_json(adapter.validate_python(payload))
                return {DATA_FIELD: data}
            text = json.dumps(
                payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                default=_plain,
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise MessageEncodeError(f"payload is not JSON-serialisable: {exc}") from exc
        return {DATA_FIELD: text.encode("utf-8")}

    def decode(self, fields: Mapping[bytes, bytes]) -> P:
        raw = fields.get(DATA_FIELD)
        if raw is None:
            present = sorted(k.decode("utf-8", "replace") for k in fields)
            raise MessageDecodeError(f"entry has no 'data' field (fields: {present})")
        try:
            payload = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise MessageDecodeError(f"'data' is not valid UTF-8: {exc}") from exc
        except RecursionError as exc:
            raise MessageDecodeError("'data' is JSON nested too deeply to decode") from exc
        except ValueError as exc:
            raise MessageDecodeError(f"'data' is not valid JSON: {exc}") from exc
        if self._adapter is None:
            return payload  # type: ignore[no-any-return]
        return self._validate(payload)

    def _validate(self, payload: Any) -> P:
        assert self._adapter is not None
        assert self.model is not None
        try:
            return self._adapter.validate_python(payload)  # type: ignore[no-any-return]
        except ValueError as exc:  # pydantic.ValidationError
            errors = _errors(exc)
            shown = "; ".join(f"{_where(e)}: {e.get('msg')}" for e in errors[:_SHOWN_ERRORS])
            raise PayloadValidationError(
                f"payload is not a valid {self.model.__name__}: {shown}", errors=errors
            ) from exc


@functools.lru_cache(maxsize=256)
def _adapter(model: type[Any]) -> Any:
    """pydantic's TypeAdapter for ``model`` (built once per model)."""
    try:
        import pydantic
    except ImportError as exc:
        raise ConfigurationError(
            "typed payloads (JsonCodec(Model)) need pydantic: pip install "
            "'safesync-async[pydantic]'"
        ) from exc
    return pydantic.TypeAdapter(model)


def _errors(exc: ValueError) -> list[dict[str, object]]:
    listed = getattr(exc, "errors", None)
    if not callable(listed):
        return [{"loc": (), "msg": str(exc), "type": "value_error"}]
    try:
        found: list[dict[str, object]] = listed(include_url=False, include_context=False)
    except TypeError:
        found = listed()
    return [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in found]


def _where(error: Mapping[str, object]) -> str:
    location = error.get("loc")
    parts = location if isinstance(location, tuple | list) else ()
    return ".".join(str(part) for part in parts) or "(payload)"


def _plain(value: object) -> object:
    """What ``json.dumps`` cannot encode by itself: pydantic models and dataclasses (with
    what pydantic can turn into JSON inside them: decimals, dates...)."""
    if not (hasattr(value, "model_dump") or dataclasses.is_dataclass(value)):
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
    try:
        from pydantic_core import to_jsonable_python
    except ImportError:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable") from None
    try:
        return to_jsonable_python(value)
    except ValueError as exc:  # PydanticSerializationError
        raise TypeError(str(exc)) from exc
