"""The deferred-write queue of a session: statements waiting to be sent together."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..errors import DatabaseError, SessionStateError
from ._statements import Params, Statement, describe

__all__ = ["MAX_DEFERRED", "DeferredQueue", "DeferredWrite", "RoundTrip"]

#: Most statements a session holds deferred; beyond, defer() asks for a flush().
MAX_DEFERRED = 10_000
# Most SQL text sent in one round trip when deferred statements are flushed.
_ROUND_TRIP_BYTES = 512 * 1024


class DeferredWrite:
    """A statement waiting for the next flush; ``rendered`` (parameters inlined by the
    driver) when it can share a round trip with others."""

    __slots__ = ("params", "rendered", "sql")

    def __init__(self, sql: Statement, params: Params, rendered: str | None) -> None:
        self.sql = sql
        self.params = params
        self.rendered = rendered


#: How deferred writes go out: rendered SQL texts sharing one round trip, or one
#: statement on its own.
RoundTrip = list[str] | DeferredWrite


class DeferredQueue(list[DeferredWrite]):
    """Deferred writes in order (a list, so that "anything deferred?" costs nothing on
    the hot path). ``mark()``/``drop_since()`` let a savepoint drop what was deferred
    inside it when it rolls back."""

    __slots__ = ()

    def add(self, item: DeferredWrite) -> None:
        if len(self) >= MAX_DEFERRED:
            raise SessionStateError(
                f"{MAX_DEFERRED} statements are already deferred; await session.flush() "
                "before deferring more"
            )
        self.append(item)

    def take(self) -> list[DeferredWrite]:
        """Remove and return everything waiting."""
        items = self[:]
        self.clear()
        return items

    def mark(self) -> int:
        return len(self)

    def drop_since(self, mark: int) -> None:
        """Forget the writes deferred after ``mark()`` returned ``mark``."""
        del self[mark:]

    def fits_one_trip(self) -> bool:
        """Whether everything waiting is rendered SQL text that fits one round trip."""
        trips = round_trips(self)
        first = next(trips, None)
        return isinstance(first, list) and next(trips, None) is None


def round_trips(items: Sequence[DeferredWrite]) -> Iterator[RoundTrip]:
    """Deferred writes as they are sent: consecutive rendered ones together (up to
    _ROUND_TRIP_BYTES of text), any other alone."""
    script: list[str] = []
    size = 0
    for item in items:
        if script and (item.rendered is None or size >= _ROUND_TRIP_BYTES):
            yield script
            script, size = [], 0
        if item.rendered is None:
            yield item
        else:
            script.append(item.rendered)
            size += len(item.rendered)
    if script:
        yield script


def name_failed_write(error: DatabaseError, items: Sequence[DeferredWrite], done: int) -> None:
    """Note on ``error`` which deferred write failed (after ``done`` had succeeded)."""
    failed = items[min(done, len(items) - 1)]
    error.add_note(
        f"raised by deferred statement {done + 1} of {len(items)}: {describe(failed.sql)}"
    )
