"""``safesync dead-letters``: list, show, replay and purge dead letters."""

from __future__ import annotations

from typing import Annotated

import typer

from ..queue.client import RedisClient
from . import render
from .base import (
    AllFlag,
    Command,
    Count,
    DeadLetterStream,
    EntryIds,
    Group,
    Stream,
    YesFlag,
    check_entry_id,
    dead_letter_key_for,
    redis_of,
    run_job,
)
from .operations import (
    EXIT_FAILED,
    EXIT_OK,
    Letter,
    count_letters,
    delete_letters,
    find_letters,
    plan_replay,
    read_letters,
    replay,
)

__all__ = ["dead_letters_app"]

dead_letters_app = typer.Typer(
    cls=Group, help="List, show, replay and purge dead letters.", no_args_is_help=True
)


@dead_letters_app.command("list", cls=Command)
def list_dead_letters(
    ctx: typer.Context,
    stream: Stream,
    count: Count = 50,
    dead_letter_stream: DeadLetterStream = None,
) -> None:
    """The oldest dead letters of a stream: reason, deliveries, error."""
    key = dead_letter_key_for(stream, dead_letter_stream)

    async def job(out: render.Output) -> int:
        async with redis_of(ctx) as redis:
            total = await count_letters(redis, key)
            letters = await read_letters(redis, key, count)
        render.dead_letters(out, letters, dead_letter_stream=key, total=total)
        return EXIT_OK

    run_job(ctx, job)


@dead_letters_app.command("show", cls=Command)
def show_dead_letter(
    ctx: typer.Context,
    stream: Stream,
    entry_id: Annotated[
        str,
        typer.Argument(metavar="ENTRY_ID", help="The dead letter's id.", callback=check_entry_id),
    ],
    dead_letter_stream: DeadLetterStream = None,
) -> None:
    """One dead letter: metadata and original fields (text when UTF-8, else base64)."""
    key = dead_letter_key_for(stream, dead_letter_stream)

    async def job(out: render.Output) -> int:
        async with redis_of(ctx) as redis:
            [letter] = await find_letters(redis, key, [entry_id])
        render.dead_letter(out, letter, dead_letter_stream=key)
        return EXIT_OK

    run_job(ctx, job)


def _selection(entry_ids: list[str], all_: bool) -> list[str] | None:
    """The ids to act on (None: all); exactly one of ENTRY_IDs and --all is required."""
    if bool(entry_ids) == all_:
        raise typer.BadParameter("give ENTRY_IDs or --all (not both)", param_hint="ENTRY_ID")
    return None if all_ else entry_ids


async def _select(redis: RedisClient, key: str, ids: list[str] | None) -> list[Letter]:
    if ids is None:
        return await read_letters(redis, key, None)
    return await find_letters(redis, key, ids)


def _change_exit_code(rows: list[dict[str, str]], applied: bool) -> int:
    """A dry run that would change something exits 1, so scripts cannot mistake it."""
    return EXIT_FAILED if rows and not applied else EXIT_OK


@dead_letters_app.command("replay", cls=Command)
def replay_dead_letters(
    ctx: typer.Context,
    stream: Stream,
    entry_ids: EntryIds = None,
    all_: AllFlag = False,
    yes: YesFlag = False,
    dead_letter_stream: DeadLetterStream = None,
) -> None:
    """Put dead letters back on the stream they came from.

    Re-adds each dead letter's original fields to its stream, then deletes it from the
    dead-letter stream. Without --yes: only show what would happen, exit 1.
    """
    key = dead_letter_key_for(stream, dead_letter_stream)
    ids = _selection(entry_ids or [], all_)

    async def job(out: render.Output) -> int:
        async with redis_of(ctx) as redis:
            plan = plan_replay(await _select(redis, key, ids), stream, key)
            rows = [{"id": letter.id, "stream": target} for letter, target in plan.moves]
            if yes:
                done = await replay(redis, key, plan)
                rows = [{"id": r.id, "stream": r.stream, "new_id": r.new_id} for r in done]
        skipped = [letter.id for letter in plan.skipped]
        render.changes(
            out, action="replay", applied=yes, dead_letter_stream=key, rows=rows, skipped=skipped
        )
        return _change_exit_code(rows, yes)

    run_job(ctx, job)


@dead_letters_app.command("purge", cls=Command)
def purge_dead_letters(
    ctx: typer.Context,
    stream: Stream,
    entry_ids: EntryIds = None,
    all_: AllFlag = False,
    yes: YesFlag = False,
    dead_letter_stream: DeadLetterStream = None,
) -> None:
    """Delete dead letters for good.

    Without --yes: only show what would be deleted, exit 1.
    """
    key = dead_letter_key_for(stream, dead_letter_stream)
    ids = _selection(entry_ids or [], all_)

    async def job(out: render.Output) -> int:
        async with redis_of(ctx) as redis:
            letters = await _select(redis, key, ids)
            if yes:
                await delete_letters(redis, key, [letter.id for letter in letters])
        rows = [{"id": letter.id, "reason": _reason(letter)} for letter in letters]
        render.changes(out, action="purge", applied=yes, dead_letter_stream=key, rows=rows)
        return _change_exit_code(rows, yes)

    run_job(ctx, job)


def _reason(letter: Letter) -> str:
    return letter.meta.reason.value if letter.meta else "?"
