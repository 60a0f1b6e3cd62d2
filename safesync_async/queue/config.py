"""QueueConfig: everything a consumer needs to know about its stream and group."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._validation import check_int, check_seconds
from ..errors import ConfigurationError
from .codec import Codec, JsonCodec
from .keys import dead_letter_key
from .models import QueueMessage

__all__ = ["QueueConfig"]

# Integer settings and their minimum values; the optional ones may also be None.
_INTS = {
    "block_ms": 1,
    "concurrency": 1,
    "batch_size": 1,
    "claim_min_idle_ms": 0,
    "claim_count": 1,
    "max_message_bytes": 1,
    "transaction_retries": 0,
}
_OPTIONAL_INTS = {"prefetch": 0, "max_deliveries": 1, "claim_interval_ms": 1}


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    """Settings of a :class:`QueueConsumer` (seed-compatible names first).

    Attributes:
        stream_key: the Redis stream to consume.
        consumer_group: the consumer group; created (with the stream) if missing.
        consumer_name: this consumer's name in the group; stable across restarts so a
            restarted worker finds its own pending entries first. Defaults to
            ``<hostname>-<pid>``.
        block_ms: how long one XREADGROUP waits for new entries.
        concurrency: handlers running at once (capped by the engine's pool size).
        prefetch: entries read ahead beyond what the workers hold (``None``: as many
            as ``concurrency * batch_size``). Bounds memory with ``max_message_bytes``.
        batch_size: batch mode when above 1 (with an engine): each worker handles up to
            this many waiting messages in one transaction, with one COMMIT and one
            XACK. A failing batch is rolled back and its messages handled one by one.
            With an inbox, a batch redelivered after a crash is still applied once.
        ordering: ``"none"``: messages are handled concurrently, in any order.
            ``"key"``: messages with the same ordering key are handled one at a time,
            in stream order, by this consumer; different keys run concurrently. A
            failed message is retried in place and its key's later messages wait for
            it. The key is the entry's ``ordering_key`` field (set by
            ``QueueProducer.publish(..., key=...)``) or ``ordering_key(message)``;
            messages without a key have no ordering constraint.
        ordering_key: with ``ordering="key"``, a function of the decoded message that
            returns its key (bytes or str; ``None`` or empty: no key), instead of the
            ``ordering_key`` field. Called when the entry is read; keep it cheap and
            deterministic. It may raise MessageDecodeError for an entry that cannot be
            keyed (dead-lettered as undecodable); any other exception stops the
            consumer, as a bug in a codec does.
        ordering_retry_delay: with ``ordering="key"``, seconds before a failed message
            is retried in place; doubles with each further attempt (with jitter).
        ordering_retry_max_delay: the longest of those delays.
        start_id: where a newly created group starts; ``"0"`` consumes the backlog,
            ``"$"`` only new entries.
        max_deliveries: after this many failed deliveries an entry goes to the
            dead-letter stream (``None``: retry forever).
        dead_letter_stream: where dead letters go. Default: ``{<stream_key>}:dead``, or
            ``<stream_key>:dead`` when the stream key has a hash tag already (see
            :func:`~safesync_async.dead_letter_key`): in the stream's Redis Cluster
            hash slot, as the dead letter and the ack are one transaction. On a cluster
            an explicit key must share that slot.
        claim_min_idle_ms: entries pending longer than this (a crashed consumer, a
            failed handler) are claimed and retried by the running consumers. A running
            consumer resets the idle time of the entries it holds every half of this,
            so only a consumer whose event loop is blocked that long loses them.
        claim_interval_ms: how often the in-loop recovery runs (``None``: never; run a
            dedicated ``run_claim_stale`` worker instead).
        claim_count: entries claimed per recovery step at most.
        max_message_bytes: entries larger than this are dead-lettered without decoding.
        handler_timeout: seconds a handler may take (with the session's start, without
            its COMMIT); on expiry it is cancelled, rolled back and counted as a failure.
            The COMMIT is bounded separately, by the same number of seconds, as the
            session's ``cleanup_timeout``: a COMMIT that does not answer in time is an
            unknown outcome (redelivered, never dead-lettered), and a COMMIT confirmed
            late is acked. ``None``: no limit (COMMIT bounded by 30 s).
        transaction_retries: with an engine, how many times a handler's transaction
            (or a batch's) that failed with a deadlock, lock wait timeout, serialization
            failure or :class:`VersionConflictError` is run again at once, after a short
            random pause, before the delivery counts as failed. ``0``: never.
        drain_timeout: seconds ``stop()`` waits for running handlers before cancelling them.
        on_missing_group: ``"recreate"`` the group (from ``start_id``) if it vanishes,
            or ``"fail"`` with ConsumerGroupMissingError.
        stop_on_error: stop the consumer when a handler fails (the seed's behaviour);
            by default the message stays pending and the consumer goes on.
        reconnect_initial_delay: first backoff delay (seconds) after a Redis connection
            error (or a database outage); it doubles on each failure in a row.
        reconnect_max_delay: the longest backoff delay (seconds).
        startup_timeout: how long ``run()`` may wait, when it starts, for Redis (and the
            database, when an inbox is checked) to become reachable before it raises the
            outage error (``QueueUnavailableError``, ``DatabaseUnavailableError``) naming
            the servers. ``None``: wait for ever (the first failure and then one every
            30 s are logged at WARNING either way).
        codec: turns entry fields into payloads and back (default: JSON in field ``data``).
    """

    stream_key: str
    consumer_group: str
    consumer_name: str = field(default_factory=_default_consumer_name)
    block_ms: int = 5_000
    concurrency: int = 16
    prefetch: int | None = None
    batch_size: int = 1
    ordering: Literal["none", "key"] = "none"
    ordering_key: Callable[[QueueMessage[Any]], bytes | str | None] | None = None
    ordering_retry_delay: float = 0.5
    ordering_retry_max_delay: float = 30.0
    start_id: str = "0"
    max_deliveries: int | None = 5
    dead_letter_stream: str | None = None
    claim_min_idle_ms: int = 60_000
    claim_interval_ms: int | None = 5_000
    claim_count: int = 100
    max_message_bytes: int = 1_048_576
    handler_timeout: float | None = None
    transaction_retries: int = 3
    drain_timeout: float = 30.0
    on_missing_group: Literal["recreate", "fail"] = "recreate"
    stop_on_error: bool = False
    reconnect_initial_delay: float = 0.1
    reconnect_max_delay: float = 10.0
    startup_timeout: float | None = 60.0
    codec: Codec[Any] = field(default_factory=JsonCodec)

    def __post_init__(self) -> None:
        for name in ("stream_key", "consumer_group", "consumer_name", "start_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"QueueConfig.{name} must be a non-empty string")
        for name, minimum in _INTS.items():
            check_int(f"QueueConfig.{name}", getattr(self, name), minimum=minimum)
        for name, minimum in _OPTIONAL_INTS.items():
            if getattr(self, name) is not None:
                check_int(f"QueueConfig.{name}", getattr(self, name), minimum=minimum)
        for name in (
            "drain_timeout",
            "reconnect_initial_delay",
            "reconnect_max_delay",
            "ordering_retry_delay",
            "ordering_retry_max_delay",
        ):
            check_seconds(f"QueueConfig.{name}", getattr(self, name))
        self._check_ordering()
        check_seconds("QueueConfig.handler_timeout", self.handler_timeout, allow_none=True)
        check_seconds("QueueConfig.startup_timeout", self.startup_timeout, allow_none=True)
        if self.on_missing_group not in ("recreate", "fail"):
            raise ConfigurationError("on_missing_group must be 'recreate' or 'fail'")
        if (
            self.handler_timeout is not None
            and self.claim_min_idle_ms <= self.handler_timeout * 1000
        ):
            raise ConfigurationError(
                "claim_min_idle_ms must be longer than handler_timeout, or running messages "
                "would be claimed and handled twice"
            )
        if self.dead_letter_stream == self.stream_key:
            raise ConfigurationError("dead_letter_stream must differ from stream_key")
        if self.dead_letter_stream is None:
            dead_letter_key(self.stream_key)  # refuses names no derived key can follow

    def _check_ordering(self) -> None:
        if self.ordering not in ("none", "key"):
            raise ConfigurationError("QueueConfig.ordering must be 'none' or 'key'")
        if self.ordering_key is not None:
            if not callable(self.ordering_key):
                raise ConfigurationError("QueueConfig.ordering_key must be a function")
            if self.ordering != "key":
                raise ConfigurationError(
                    "QueueConfig.ordering_key only takes effect with ordering='key'; "
                    "set ordering='key' (or drop ordering_key)"
                )
        if self.ordering_retry_max_delay < self.ordering_retry_delay:
            raise ConfigurationError(
                "QueueConfig.ordering_retry_max_delay must not be below ordering_retry_delay"
            )

    @property
    def dead_letters(self) -> str:
        """The dead-letter stream's key."""
        return self.dead_letter_stream or dead_letter_key(self.stream_key)

    def read_ahead_limit(self, concurrency: int) -> int:
        """Entries held at once (being handled plus prefetched) for a concurrency."""
        held = concurrency * self.batch_size
        return held + (held if self.prefetch is None else self.prefetch)
