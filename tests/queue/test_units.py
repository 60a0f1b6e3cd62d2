"""Unit tests of the queue building blocks: codec, config validation, reply shapes, dead
letter fields and the client check."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from safesync_async import (
    ConfigurationError,
    DeadLetterReason,
    JsonCodec,
    MessageDecodeError,
    MessageEncodeError,
    QueueConfig,
    QueueMessage,
    check_redis_client,
    create_redis_client,
    parse_dead_letter,
)
from safesync_async.queue._backoff import Backoff
from safesync_async.queue._streams import read_response_entries
from safesync_async.queue.dead_letters import dead_letter_fields


def test_json_codec_is_seed_wire_compatible() -> None:
    """Payloads are JSON in one field named 'data'; other fields are ignored on decode."""
    codec = JsonCodec()
    assert codec.encode({"order_id": 42}) == {b"data": b'{"order_id":42}'}
    assert codec.decode({b"data": b'{"order_id": 42}', b"traceparent": b"x"}) == {"order_id": 42}
    assert codec.decode({b"data": "ünï".encode().join([b'"', b'"'])}) == "ünï"


@pytest.mark.parametrize(
    "fields",
    [
        {b"data": b"{not json"},
        {b"data": b"\xff\xfe"},
        {b"payload": b"{}"},
        {b"data": b"[" * 100_000 + b"]" * 100_000},
        {b"data": b""},
    ],
    ids=["invalid-json", "non-utf8", "missing-field", "deeply-nested", "empty"],
)
def test_json_codec_rejects_bad_entries(fields: dict[bytes, bytes]) -> None:
    """Every malformed entry raises MessageDecodeError, never another exception."""
    with pytest.raises(MessageDecodeError):
        JsonCodec().decode(fields)


def test_json_codec_rejects_unencodable_payloads() -> None:
    """Sets and NaN are not JSON: MessageEncodeError before anything is sent."""
    for payload in ({1, 2}, float("nan")):
        with pytest.raises(MessageEncodeError):
            JsonCodec().encode(payload)


def test_config_validation() -> None:
    """Bad values are rejected with ConfigurationError naming the field."""
    good: dict[str, Any] = {"stream_key": "s", "consumer_group": "g", "consumer_name": "c"}
    QueueConfig(**good)
    bad_values: tuple[dict[str, Any], ...] = (
        {"stream_key": ""},
        {"concurrency": 0},
        {"block_ms": -1},
        {"max_deliveries": 0},
        {"prefetch": -1},
        {"drain_timeout": 0},
        {"handler_timeout": float("nan")},
        {"on_missing_group": "ignore"},
        {"dead_letter_stream": "s"},
        {"concurrency": True},
    )
    for bad in bad_values:
        with pytest.raises(ConfigurationError):
            QueueConfig(**{**good, **bad})
    config = QueueConfig(**good)
    assert config.dead_letters == "{s}:dead"
    assert config.read_ahead_limit(8) == 16
    assert QueueConfig(**good, prefetch=0).read_ahead_limit(8) == 8
    assert QueueConfig(stream_key="s", consumer_group="g").consumer_name


def test_reply_shapes_are_normalised() -> None:
    """XREADGROUP replies in RESP2, RESP3 and legacy RESP3 shapes give the same entries;
    a deleted entry's missing fields become an empty dict."""
    entries = [(b"1-0", {b"data": b"1"}), (b"2-0", {})]
    expected = [("1-0", {b"data": b"1"}), ("2-0", {})]
    assert read_response_entries([[b"s", entries]]) == expected
    assert read_response_entries({b"s": entries}) == expected
    assert read_response_entries({b"s": [entries]}) == expected
    assert read_response_entries([[b"s", [(b"3-0", None)]]]) == [("3-0", {})]
    assert read_response_entries([]) == []
    assert read_response_entries({}) == []


def test_dead_letter_fields_round_trip() -> None:
    """A dead letter keeps the original fields verbatim and its metadata reads back."""
    fields = dead_letter_fields(
        stream="orders",
        entry_id="5-1",
        group="g",
        consumer="c",
        deliveries=3,
        reason=DeadLetterReason.HANDLER_FAILED,
        error="ValueError: nope",
        original={b"data": b"\xff", b"dlq:stream": b"spoofed"},
    )
    letter = parse_dead_letter("9-0", fields)
    assert letter.fields == {b"data": b"\xff"}
    assert (letter.original_stream, letter.original_id, letter.deliveries) == ("orders", "5-1", 3)
    assert letter.reason is DeadLetterReason.HANDLER_FAILED
    assert letter.error == "ValueError: nope"


def test_message_metadata() -> None:
    """The enqueue time comes from the id; the idempotency key from its field."""
    message: QueueMessage[dict[str, int]] = QueueMessage(
        id="1700000000123-0", stream="s", group="g", payload={}, fields={b"idempotency_key": b"k1"}
    )
    assert message.enqueued_at.timestamp() == pytest.approx(1_700_000_000.123)
    assert message.idempotency_key == "k1"


def test_backoff_grows_and_resets() -> None:
    """Delays grow exponentially up to the cap and start over after reset."""
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.5 <= d <= 1.0 for d in delays[4:])
    backoff.reset()
    assert backoff.next_delay() <= 0.1


async def test_client_check() -> None:
    """The factory's client passes; decode_responses or a socket timeout below the block
    time are refused; no timeout, no keepalive and retry storms are warned about."""
    good = create_redis_client("redis://127.0.0.1:6379/0", block_ms=2000)
    assert check_redis_client(good, block_ms=2000) == []
    assert good.connection_pool.connection_kwargs["socket_timeout"] == 7.0
    with pytest.raises(ConfigurationError):
        check_redis_client(Redis(decode_responses=True), block_ms=1000)
    with pytest.raises(ConfigurationError):
        check_redis_client(Redis(socket_timeout=1), block_ms=5000)
    warnings = check_redis_client(
        Redis(socket_timeout=None, socket_keepalive=False, retry=Retry(NoBackoff(), 10)),
        block_ms=1000,
    )
    assert len(warnings) == 3
    for client in (good,):
        await client.aclose()
