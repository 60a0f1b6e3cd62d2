"""WorkerApp: what ``safesync worker module:app`` runs, declared in the user's module."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import ConfigurationError
from ..queue.config import QueueConfig
from ..queue.consumer import DbHandler, Handler, InboxStore

__all__ = ["RUNNER_OWNED", "WorkerApp", "handler_needs_session"]

#: QueueConfig fields the runner sets itself (from the app's own arguments or per process).
RUNNER_OWNED = frozenset(
    {"stream_key", "consumer_group", "consumer_name", "concurrency", "batch_size", "drain_timeout"}
)
_QUEUE_FIELDS = frozenset(field.name for field in dataclasses.fields(QueueConfig))

_H = TypeVar("_H", bound=Callable[..., Any])


class WorkerApp:
    """A consumer worker declared in your module and run by ``safesync worker``.

    ``safesync worker myapp.worker:app --workers 4`` imports ``myapp.worker``, takes
    ``app`` and runs 4 processes, each with one :class:`QueueConsumer` calling the
    handler (see ``docs/worker.md``)::

        app = WorkerApp(stream="payments", group="ledger", inbox=Inbox("ledger_inbox"))

        @app.handler
        async def record(message: QueueMessage[Any], session: DbSession) -> None: ...

    A handler taking ``(message, session)`` runs in a transaction on the database at
    ``database_url``; one taking ``(message)`` needs no database. Every argument left
    ``None`` can come from the command line or the environment (``SAFESYNC_STREAM``,
    ``SAFESYNC_DATABASE_URL``...); those win over the values given here, which win over
    the built-in defaults. Prefer the environment for URLs with passwords.

    Args:
        stream: the stream key to consume.
        group: the consumer group.
        handler: the handler (or use the :meth:`handler` decorator).
        inbox: an :class:`Inbox` for effectively-once effects (needs a session handler).
        database_url: SQLAlchemy URL of the database (``mysql+asyncmy://...``).
        redis_url: Redis URL.
        workers: processes to run.
        concurrency: handlers running at once in each process.
        batch_size: messages per transaction (batch mode above 1).
        drain_timeout: seconds a stopping process waits for running handlers.
        queue_options: other :class:`QueueConfig` settings (``max_deliveries``,
            ``claim_min_idle_ms``...). Stream, group, consumer name, concurrency, batch
            size and drain timeout are set by the runner.
        engine_options: keyword arguments for :func:`safesync_async.create_engine`
            (``pool_size`` defaults to the concurrency).
    """

    def __init__(
        self,
        *,
        stream: str | None = None,
        group: str | None = None,
        handler: DbHandler | Handler | None = None,
        inbox: InboxStore | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        workers: int | None = None,
        concurrency: int | None = None,
        batch_size: int | None = None,
        drain_timeout: float | None = None,
        queue_options: Mapping[str, Any] | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.stream = stream
        self.group = group
        self.inbox = inbox
        self.database_url = database_url
        self.redis_url = redis_url
        self.workers = workers
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.drain_timeout = drain_timeout
        self.queue_options = dict(queue_options or {})
        self.engine_options = dict(engine_options or {})
        self._handler: DbHandler | Handler | None = None
        unknown = sorted(set(self.queue_options) - _QUEUE_FIELDS)
        if unknown:
            raise ConfigurationError(f"queue_options: not QueueConfig settings: {unknown}")
        owned = sorted(set(self.queue_options) & RUNNER_OWNED)
        if owned:
            raise ConfigurationError(
                f"queue_options: {owned} are set by the runner; use WorkerApp's own arguments"
            )
        if handler is not None:
            self.handler(handler)

    def handler(self, function: _H) -> _H:
        """Register the handler; usable as a decorator. Returns ``function`` unchanged."""
        if self._handler is not None:
            raise ConfigurationError("this WorkerApp already has a handler")
        handler_needs_session(function)
        self._handler = function
        return function

    @property
    def message_handler(self) -> DbHandler | Handler:
        """The registered handler."""
        if self._handler is None:
            raise ConfigurationError(
                "the WorkerApp has no handler: pass handler=... or decorate one with @app.handler"
            )
        return self._handler

    @property
    def needs_session(self) -> bool:
        """Whether the handler takes ``(message, session)`` (and so needs a database)."""
        return handler_needs_session(self.message_handler)

    def check(self) -> None:
        """Raise :class:`ConfigurationError` if the app cannot run as declared."""
        if self.inbox is not None and not self.needs_session:
            raise ConfigurationError(
                f"an inbox needs a handler taking (message, session): "
                f"{_describe(self.message_handler)} takes only the message"
            )


def handler_needs_session(handler: object) -> bool:
    """True for ``async def h(message, session)``, False for ``async def h(message)``;
    :class:`ConfigurationError` for anything else (not async, other arities)."""
    name = _describe(handler)
    if not callable(handler):
        raise ConfigurationError(f"{name} is not callable; the handler must be an async function")
    call = handler if inspect.isroutine(handler) else getattr(handler, "__call__", handler)  # noqa: B004
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise ConfigurationError(
            f"{name} is not a coroutine function: declare the handler with `async def`"
        )
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the signature of {name}: {exc}") from exc
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [
        p
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (*positional, inspect.Parameter.KEYWORD_ONLY)
    ]
    keyword_only = any(p.kind is inspect.Parameter.KEYWORD_ONLY for p in required)
    if keyword_only or len(required) not in (1, 2):
        raise ConfigurationError(
            f"{name}{signature} has the wrong signature: the handler takes (message) or "
            "(message, session)"
        )
    return len(required) == 2


def _describe(handler: object) -> str:
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    module = getattr(handler, "__module__", None)
    return f"{module}.{name}" if module else str(name)
