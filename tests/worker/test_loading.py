"""Import paths and handler signatures are checked before anything starts, each problem
reported as one ConfigurationError that says what to fix."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from safesync_async import ConfigurationError, DbSession, Inbox, QueueMessage, WorkerApp
from safesync_async.worker.app import handler_needs_session
from safesync_async.worker.loading import load_app


async def one(message: QueueMessage[Any]) -> None: ...


async def two(message: QueueMessage[Any], session: DbSession) -> None: ...


async def two_and_optional(message: QueueMessage[Any], session: DbSession, x: int = 0) -> None: ...


async def keyword_required(message: QueueMessage[Any], *, session: DbSession) -> None: ...


async def nothing() -> None: ...


def sync(message: QueueMessage[Any]) -> None: ...


class AsyncCallable:
    async def __call__(self, message: QueueMessage[Any], session: DbSession) -> None: ...


def test_arity_decides_whether_a_session_is_needed() -> None:
    """(message) runs without a database, (message, session) in a transaction; optional
    extra parameters, async callables and partials are accepted."""
    assert handler_needs_session(one) is False
    assert handler_needs_session(two) is True
    assert handler_needs_session(two_and_optional) is True
    assert handler_needs_session(AsyncCallable()) is True
    assert handler_needs_session(functools.partial(two_and_optional, x=1)) is True


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (sync, "is not a coroutine function"),
        (nothing, "has the wrong signature"),
        (keyword_required, "has the wrong signature"),
        (42, "is not callable"),
    ],
)
def test_wrong_handlers_are_refused(handler: object, message: str) -> None:
    """Sync functions, wrong arities and non-callables are ConfigurationErrors."""
    with pytest.raises(ConfigurationError, match=message):
        handler_needs_session(handler)


def test_decorator_registers_once_and_inbox_needs_a_session() -> None:
    """@app.handler registers the handler (returned unchanged) once; an inbox with a
    handler that takes no session is refused."""
    app = WorkerApp(stream="s", group="g", inbox=Inbox("t"))
    assert app.handler(one) is one
    with pytest.raises(ConfigurationError, match="already has a handler"):
        app.handler(two)
    with pytest.raises(ConfigurationError, match="an inbox needs a handler taking"):
        app.check()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.worker.apps", "is not an import path: use module:attribute"),
        (":app", "is not an import path"),
        ("tests.worker.missing:app", "module 'tests.worker.missing' not found"),
        ("tests.worker.apps:missing", "has no attribute 'missing'"),
        ("tests.worker.apps:asyncio", "is a module, not a WorkerApp"),
        ("tests.worker.apps:EFFECTS", "is a str, not a WorkerApp"),
        ("tests.worker.apps:not_async", "is not a coroutine function"),
    ],
)
def test_import_paths_that_do_not_resolve(target: str, message: str) -> None:
    """Every way an import path can be wrong gives a one-line ConfigurationError."""
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_app(target)
    assert "\n" not in str(caught.value)


def test_errors_inside_the_module_are_not_mistaken_for_a_missing_module(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import that fails inside the user's module names the real error and where it
    happened, not 'module not found'."""
    (tmp_path / "broken_app.py").write_text("import not_installed_dependency\n")
    (tmp_path / "raising_app.py").write_text("x = 1\nraise RuntimeError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match="No module named 'not_installed_dependency'"):
        load_app("broken_app:app")
    with pytest.raises(
        ConfigurationError, match=r"RuntimeError: bad config \(.*raising_app.py:2\)"
    ):
        load_app("raising_app:app")


def test_a_handler_target_becomes_an_app() -> None:
    """``module:handler`` gives an app around the handler (stream and group from the
    options or the environment); ``module:app`` gives the declared app itself."""
    from tests.worker import apps

    assert load_app("tests.worker.apps:effects") is apps.effects
    app = load_app("tests.worker.apps:without_session")
    assert app.message_handler is apps.without_session and app.needs_session is False
