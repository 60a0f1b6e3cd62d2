"""The key layout (every key derived from a stream shares its Redis Cluster hash slot) and
the translation of the cluster client's errors, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis import exceptions as redis_exc

from safesync_async import (
    ConfigurationError,
    QueueConfig,
    QueueConnectionError,
    QueueError,
    QueueUnavailableError,
    dead_letter_key,
)
from safesync_async.queue._errors import redis_errors
from safesync_async.queue.keys import check_same_slot, hash_slot, hash_tag, legacy_dead_letter_key


def test_dead_letter_keys_follow_the_stream() -> None:
    """A plain name is wrapped in braces; a name with a hash tag keeps it; both hash to the
    stream's slot."""
    assert dead_letter_key("orders") == "{orders}:dead"
    assert dead_letter_key("{app}orders") == "{app}orders:dead"
    assert dead_letter_key("a{b") == "{a{b}:dead"
    assert dead_letter_key("test:1f2e:stream") == "{test:1f2e:stream}:dead"
    for stream in ("orders", "{app}orders", "a{b", "x{y}z"):
        assert hash_slot(dead_letter_key(stream)) == hash_slot(stream), stream
    assert legacy_dead_letter_key("orders") == "orders:dead"


def test_hash_tags_as_redis_reads_them() -> None:
    """Only the first '{' counts, the tag ends at the next '}', and an empty tag is none."""
    assert hash_tag("{user1000}.following") == "user1000"
    assert hash_tag("foo{}{bar}") is None
    assert hash_tag("foo{{bar}}zap") == "{bar"
    assert hash_tag("foo{bar}{zap}") == "bar"
    assert hash_tag("plain") is None
    assert hash_slot("{user1000}.following") == hash_slot("user1000")


@pytest.mark.parametrize("stream", ["a}b", "x{}y", "{}x", "}"])
def test_names_no_derived_key_can_follow_are_refused(stream: str) -> None:
    """A name without a hash tag that contains '}' is refused with a message saying what to
    do, by the key helper and by QueueConfig (unless the dead-letter stream is named)."""
    with pytest.raises(ConfigurationError, match="hash tag"):
        dead_letter_key(stream)
    with pytest.raises(ConfigurationError, match="dead_letter_stream"):
        QueueConfig(stream_key=stream, consumer_group="g")
    named = QueueConfig(stream_key=stream, consumer_group="g", dead_letter_stream="failed")
    assert named.dead_letters == "failed"


@given(st.text(min_size=1, max_size=30))
def test_every_accepted_name_gets_a_key_in_its_slot(stream: str) -> None:
    """For any stream name, the derived dead-letter key is either refused or in the
    stream's slot, and differs from the stream."""
    try:
        key = dead_letter_key(stream)
    except ConfigurationError:
        assert "}" in stream and hash_tag(stream) is None
        return
    assert key != stream
    assert hash_slot(key) == hash_slot(stream)


def test_explicit_dead_letter_stream_must_share_the_slot() -> None:
    """check_same_slot accepts a key with the stream's hash tag and refuses another slot."""
    check_same_slot("{orders}", "{orders}:failed", "dead_letter_stream")
    with pytest.raises(ConfigurationError, match="hash slot"):
        check_same_slot("orders", "orders:failed", "dead_letter_stream")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (redis_exc.ClusterDownError("CLUSTERDOWN The cluster is down"), QueueUnavailableError),
        (redis_exc.MasterDownError("MASTERDOWN Link with MASTER is down"), QueueUnavailableError),
        (
            redis_exc.TryAgainError("TRYAGAIN Multiple keys request during rehashing"),
            QueueUnavailableError,
        ),
        (redis_exc.ClusterError("TTL exhausted."), QueueUnavailableError),
        (redis_exc.MovedError("3999 127.0.0.1:6381"), QueueUnavailableError),
        (redis_exc.SlotNotCoveredError('Slot "5" is not covered'), QueueConnectionError),
        (redis_exc.RedisClusterUnreachableError("no node reachable"), QueueConnectionError),
        (redis_exc.ConnectionError("Connection refused"), QueueConnectionError),
    ],
)
def test_cluster_outages_become_unavailable_errors(
    error: Exception, expected: type[QueueError]
) -> None:
    """Failover and resharding errors of the cluster client are outages the consumer waits
    out (QueueUnavailableError / QueueConnectionError), never unknown exceptions."""
    with pytest.raises(expected) as caught, redis_errors("XREADGROUP", "orders"):
        raise error
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        redis_exc.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"),
        redis_exc.CrossSlotTransactionError("All keys must map to the same slot"),
        redis_exc.RedisClusterException("No way to dispatch this command"),
    ],
)
def test_cross_slot_errors_are_library_errors(error: Exception) -> None:
    """A cross-slot refusal (a configuration mistake, not an outage) is a plain QueueError
    naming the key layout, never a raw redis-py exception."""
    with pytest.raises(QueueError) as caught, redis_errors("dead-letter XADD+XACK", "orders"):
        raise error
    assert not isinstance(caught.value, QueueUnavailableError)
    assert caught.value.__cause__ is error
