"""The HTTP endpoint: metrics and health answers with the right status codes and types,
404/405 for anything else, and a failing probe is a 500, not a dead server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from safesync_async.worker.http import HealthSource, Probe, serve_http

STATE = {"live": True, "ready": False}


async def metrics() -> bytes:
    return b"# HELP x y\nx 1.0\n"


def live() -> Probe:
    return Probe(STATE["live"], {"live": STATE["live"]})


def ready() -> Probe:
    if STATE["ready"] is None:
        raise RuntimeError("probe broke")
    return Probe(bool(STATE["ready"]), {"ready": STATE["ready"]})


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    server = await serve_http("127.0.0.1", 0, HealthSource(metrics, live, ready))
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_endpoints_answer_with_status_and_body(base_url: str) -> None:
    """/metrics is Prometheus text; /health/* are JSON, 200 when good and 503 when not;
    HEAD gets the headers only; unknown paths 404, other methods 405; a probe that raises
    is a 500 and the server keeps answering."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        response = await client.get("/metrics")
        assert response.status_code == 200 and response.text == "# HELP x y\nx 1.0\n"
        assert response.headers["content-type"].startswith("text/plain; version=")
        STATE.update(live=True, ready=False)
        response = await client.get("/health/live")
        assert (response.status_code, response.json()) == (200, {"live": True})
        response = await client.get("/health/ready?verbose=1")
        assert (response.status_code, response.json()) == (503, {"ready": False})
        STATE["ready"] = True
        assert (await client.get("/health/ready")).status_code == 200
        head = await client.head("/health/ready")
        assert head.status_code == 200 and head.content == b""
        assert (await client.get("/nope")).status_code == 404
        assert (await client.post("/metrics")).status_code == 405
        STATE["ready"] = None  # type: ignore[assignment]
        assert (await client.get("/health/ready")).status_code == 500
        assert (await client.get("/health/live")).status_code == 200
