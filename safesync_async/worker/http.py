"""The runner's HTTP endpoint, on asyncio streams (no web framework):

* ``GET /metrics``: Prometheus text format, summed over the worker processes;
* ``GET /health/live``: 200 while the runner supervises and no process is stuck;
* ``GET /health/ready``: 200 when every worker process's consumer is ready.

Health answers are JSON documents saying why; 503 when not live / not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["HealthSource", "Probe", "serve_http"]

_log = logging.getLogger("safesync_async.worker.http")
_REQUEST_TIMEOUT = 10.0
_MAX_HEADERS = 100
_JSON = "application/json"
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Probe:
    """A health answer: whether it is good, and the document that says why."""

    ok: bool
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HealthSource:
    """What the endpoint asks the runner."""

    metrics: Callable[[], Awaitable[bytes]]
    live: Callable[[], Probe]
    ready: Callable[[], Probe]


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


async def serve_http(host: str, port: int, source: HealthSource) -> asyncio.Server:
    """Start listening (``port`` 0: any free port; see ``server.sockets``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(reader, writer, source)

    return await asyncio.start_server(handle, host, port, limit=16_384)


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: HealthSource
) -> None:
    try:
        async with asyncio.timeout(_REQUEST_TIMEOUT):
            method, path = await _read_request(reader)
            response = await _route(method, path, source)
            writer.write(_encode(response, head=method == "HEAD"))
            await writer.drain()
    except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
        pass  # a client that went away or spoke something else: nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    request_line = (await reader.readline()).decode("latin-1").strip()
    method, target, _version = request_line.split(" ", 2)
    for _ in range(_MAX_HEADERS):
        if (await reader.readline()).strip() == b"":
            break
    else:
        raise ValueError("too many headers")
    return method.upper(), urlsplit(target).path


async def _route(method: str, path: str, source: HealthSource) -> _Response:
    if path not in ("/metrics", "/health/live", "/health/ready"):
        return _json(404, {"error": f"no such endpoint {path!r}",
                           "endpoints": ["/metrics", "/health/live", "/health/ready"]})  # fmt: skip
    if method not in ("GET", "HEAD"):
        return _Response(405, "text/plain", b"only GET and HEAD\n", (("Allow", "GET, HEAD"),))
    try:
        if path == "/metrics":
            return _Response(200, CONTENT_TYPE_LATEST, await source.metrics())
        probe = source.live() if path == "/health/live" else source.ready()
    except Exception as exc:
        _log.warning("%s failed: %r", path, exc)
        return _json(500, {"error": f"{type(exc).__name__}: {exc}"})
    return _json(200 if probe.ok else 503, probe.document)


def _json(status: int, document: dict[str, Any]) -> _Response:
    return _Response(status, _JSON, json.dumps(document, indent=2).encode() + b"\n")


def _encode(response: _Response, *, head: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head_bytes if head else head_bytes + response.body
