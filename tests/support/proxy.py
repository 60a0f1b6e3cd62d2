"""A small asyncio TCP proxy for fault injection: freeze, reset, cut or delay a connection
when the client sends given bytes (e.g. the COMMIT packet)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


class Action(enum.Enum):
    RESET = "reset"  # close both sides before the bytes reach the server
    FREEZE = "freeze"  # forward nothing more from this client, keep the sockets open
    CUT_AFTER = "cut_after"  # forward the bytes, then close the client side: no reply
    DELAY = "delay"  # forward the bytes after ``Trigger.delay`` seconds: a slow statement


@dataclass
class Trigger:
    pattern: bytes
    action: Action
    fired: asyncio.Event = field(default_factory=asyncio.Event)
    once: bool = True
    delay: float = 0.0


class TcpProxy:
    """Listens on 127.0.0.1:<random port> and forwards to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._frozen = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._muted: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.triggers: list[Trigger] = []
        self.port = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    def add_trigger(self, pattern: bytes, action: Action, *, delay: float = 0.0) -> Trigger:
        trigger = Trigger(pattern, action, delay=delay)
        self.triggers.append(trigger)
        return trigger

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def reset(self) -> None:
        """Abort every proxied connection (RST where the OS allows)."""
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})
        pair = (writer, up_writer)
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, pair, client_side=True)),
            asyncio.create_task(self._pump(up_reader, writer, pair, client_side=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        client_side: bool,
    ) -> None:
        client, upstream = pair
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self._frozen.is_set():
                    await asyncio.Event().wait()  # hang forever, like a frozen peer
                trigger = self._match(data) if client_side else None
                action = trigger.action if trigger is not None else None
                if action is Action.RESET:
                    client.transport.abort()
                    upstream.transport.abort()
                    return
                if action is Action.FREEZE:
                    await asyncio.Event().wait()  # this connection only
                if action is Action.CUT_AFTER:
                    self._muted.add(client)  # the reply must never reach the client
                if trigger is not None and action is Action.DELAY:
                    await asyncio.sleep(trigger.delay)
                if writer in self._muted:
                    continue
                writer.write(data)
                await writer.drain()
                if action is Action.CUT_AFTER:
                    client.transport.abort()
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()

    def _match(self, data: bytes) -> Trigger | None:
        for trigger in self.triggers:
            if trigger.pattern in data and not (trigger.once and trigger.fired.is_set()):
                trigger.fired.set()
                return trigger
        return None


@contextlib.asynccontextmanager
async def proxied_engine(url: str) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    """A proxy in front of the server at ``url`` and a small engine connecting through it."""
    parts = urlsplit(url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 3306) as proxy:
        proxied = create_async_engine(
            url.replace(f":{parts.port}/", f":{proxy.port}/"), pool_size=2, max_overflow=0
        )
        try:
            yield proxy, proxied
        finally:
            await proxied.dispose()
