"""What every ``safesync`` command shares: the command classes, the global settings,
running a command's coroutine with its exit code, and the option types."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import ConfigurationError, SafeSyncError
from ..queue.client import RedisClient
from ..queue.keys import dead_letter_key
from . import render
from .operations import EXIT_INTERRUPTED, CliError, exit_code_for, is_entry_id, open_redis

__all__ = [
    "AllFlag",
    "Command",
    "Count",
    "DeadLetterStream",
    "EntryIds",
    "Group",
    "Job",
    "Settings",
    "Stream",
    "YesFlag",
    "check_entry_id",
    "dead_letter_key_for",
    "limit_option",
    "redis_of",
    "run_job",
    "seconds_option",
    "settings_of",
]


def without_flag_types(params: list[Any]) -> list[Any]:
    """Flags take no value, so help shows none for them: recent typer versions print a
    type (``<bool>``) next to every flag, ``--help`` included, unless a metavar is set."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Group(TyperGroup):
    """A command group whose help shows flags without a value type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return without_flag_types(super().get_params(ctx))


class Command(TyperCommand):
    """A command whose help shows flags without a value type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return without_flag_types(super().get_params(ctx))


@dataclass(frozen=True, slots=True)
class Settings:
    """The global options, shared with every command through the click context."""

    redis_url: str
    database_url: str
    as_json: bool
    cluster: bool = False


Job = Callable[[render.Output], Coroutine[Any, Any, int]]


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    if settings is None:
        raise RuntimeError("safesync commands must run through the safesync app")
    return settings


def redis_of(ctx: typer.Context) -> AbstractAsyncContextManager[RedisClient]:
    """The Redis client of the global options (a cluster client with ``--cluster``)."""
    settings = settings_of(ctx)
    return open_redis(settings.redis_url, cluster=settings.cluster)


def run_job(ctx: typer.Context, job: Job) -> None:
    """Run a command's coroutine and exit with its code; errors become one line."""
    out = render.Output(settings_of(ctx).as_json)
    try:
        code = asyncio.run(job(out))
    except CliError as exc:
        code = report_error(out, exc, exc.exit_code)
    except SafeSyncError as exc:
        code = report_error(out, exc, exit_code_for(exc))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    raise typer.Exit(code)


def report_error(out: render.Output, exc: Exception, code: int) -> int:
    out.error(" ".join(str(exc).split()) or type(exc).__name__)
    return code


def check_entry_id(value: str) -> str:
    if not is_entry_id(value):
        raise typer.BadParameter(f"{value!r} is not a stream entry id (like 1718000000000-0)")
    return value


def check_entry_ids(values: list[str] | None) -> list[str]:
    return [check_entry_id(value) for value in values or ()]


def dead_letter_key_for(stream: str, override: str | None) -> str:
    if override:
        return override
    try:
        return dead_letter_key(stream)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="STREAM") from None


# -- shared option types -----------------------------------------------------------

Stream = Annotated[
    str, typer.Argument(metavar="STREAM", help="The stream key.", show_default=False)
]
DeadLetterStream = Annotated[
    str | None,
    typer.Option(
        "--dead-letter-stream",
        metavar="KEY",
        help="The dead-letter stream (default: {STREAM}:dead, or STREAM:dead when STREAM "
        "has a hash tag).",
        show_default=False,
    ),
]
EntryIds = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ENTRY_ID",
        help="Dead-letter entry ids.",
        callback=check_entry_ids,
        show_default=False,
    ),
]
AllFlag = Annotated[bool, typer.Option("--all", help="Every entry of the dead-letter stream.")]
YesFlag = Annotated[bool, typer.Option("--yes", help="Really do it (else: only show what).")]
Count = Annotated[int, typer.Option(min=1, metavar="N", help="Show at most N entries.")]


def limit_option(help_text: str) -> Any:
    """An optional threshold: a count (``N``) the checked figure may not exceed."""
    return typer.Option(min=0, metavar="N", help=help_text, show_default=False)


def seconds_option(help_text: str) -> Any:
    """An optional threshold in seconds."""
    return typer.Option(min=0, metavar="SECONDS", help=help_text, show_default=False)
