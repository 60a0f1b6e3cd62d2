"""The key layout: every key the library derives from a stream hashes to the stream's slot.

Redis Cluster refuses a transaction, a script or a multi-key command whose keys live in
different hash slots (``CROSSSLOT``). A key's slot is the CRC16 of its *hash tag* (the
text between its first ``{`` and the first ``}`` after it, when that text is not empty)
or, without one, of the whole key. So a key derived from a stream stays in the stream's
slot in one of two ways:

* the stream name has a hash tag: the derived key keeps the name as a prefix, and with it
  the tag (``{app}orders`` -> ``{app}orders:dead``);
* it has none: the derived key puts the whole name in braces (``orders`` ->
  ``{orders}:dead``), which hashes exactly like the bare name.

The second way cannot work for a name without a hash tag that contains ``}``
(``a}b``: ``{a}b}:dead`` would hash ``a``); such names are refused for derived keys.
The layout is the same on a standalone Redis, so moving to a cluster changes no key.
"""

from __future__ import annotations

from redis.crc import key_slot

from ..errors import ConfigurationError

__all__ = [
    "check_same_slot",
    "dead_letter_key",
    "derived_key",
    "hash_slot",
    "hash_tag",
    "legacy_dead_letter_key",
]

DEAD_LETTER_SUFFIX = ":dead"


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it is not the whole key: the text
    between the first ``{`` and the next ``}``, if not empty; else None."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def hash_slot(key: str | bytes) -> int:
    """The cluster hash slot (0-16383) of ``key``, hash tags included."""
    return int(key_slot(key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key))


def derived_key(stream: str, suffix: str) -> str:
    """A key for ``stream`` + ``suffix`` in the stream's hash slot (see the module).

    Raises :class:`ConfigurationError` for a stream name without a hash tag that
    contains ``}``: no derived key could hash like it.
    """
    if not isinstance(stream, str) or not stream:
        raise ConfigurationError("a stream key must be a non-empty string")
    if hash_tag(stream) is not None:
        return stream + suffix
    if "}" in stream:
        raise ConfigurationError(
            f"stream key {stream!r} contains '}}' without a valid hash tag, so no key derived "
            "from it can share its Redis Cluster hash slot; rename the stream (give it a hash "
            "tag such as '{orders}...', or drop the brace) or name the dead-letter stream "
            "explicitly (QueueConfig.dead_letter_stream)"
        )
    return "{" + stream + "}" + suffix


def dead_letter_key(stream: str) -> str:
    """The default dead-letter stream of ``stream``: ``{orders}:dead`` for ``orders``,
    ``{app}orders:dead`` for ``{app}orders`` (always in the stream's hash slot)."""
    return derived_key(stream, DEAD_LETTER_SUFFIX)


def legacy_dead_letter_key(stream: str) -> str:
    """Where dead letters of ``stream`` went by default before the key layout:
    ``<stream>:dead``. The health report counts what is left there."""
    return stream + DEAD_LETTER_SUFFIX


def check_same_slot(stream: str, key: str, what: str) -> None:
    """Raise :class:`ConfigurationError` unless ``key`` hashes to ``stream``'s slot."""
    if hash_slot(key) != hash_slot(stream):
        raise ConfigurationError(
            f"{what} {key!r} is in hash slot {hash_slot(key)} and stream {stream!r} in slot "
            f"{hash_slot(stream)}: on Redis Cluster they must share a slot (the dead letter "
            "and the ack are one transaction). Leave it to the default, or give both keys the "
            "same hash tag (e.g. '{orders}' and '{orders}:failed')"
        )
