"""``safesync worker MODULE:APP``: the options of the worker runner (see ``docs/worker.md``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..worker.runner import run_worker

__all__ = ["worker_command"]


def _given(ctx: typer.Context, name: str) -> object | None:
    """A global option's value if it was given on the command line (not defaulted)."""
    parent = ctx.parent
    source = parent.get_parameter_source(name) if parent is not None else None
    if parent is None or source is None or source.name != "COMMANDLINE":
        return None
    return parent.params.get(name)


def worker_command(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:APP",
            help="The WorkerApp (or async handler) to run, e.g. myapp.worker:app.",
            show_default=False,
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-w", min=1, metavar="N", help="Processes to run [1].", show_default=False
        ),
    ] = None,
    stream: Annotated[
        str | None, typer.Option(metavar="KEY", help="The stream key.", show_default=False)
    ] = None,
    group: Annotated[
        str | None, typer.Option(metavar="NAME", help="The consumer group.", show_default=False)
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Handlers at once per process [16].", show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Messages per transaction [1].", show_default=False),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis", metavar="URL", help="Redis URL.", show_default=False),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database", metavar="URL", help="Database URL.", show_default=False),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Wait for running handlers when stopping [30].",
            show_default=False,
        ),
    ] = None,
    stop_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Kill processes not stopped by then [drain + 15].",
            show_default=False,
        ),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT", help="Serve /metrics and /health/* on PORT [off].", show_default=False
        ),
    ] = None,
    http_host: Annotated[
        str | None,
        typer.Option(
            metavar="HOST", help="Address of the HTTP endpoint [127.0.0.1].", show_default=False
        ),
    ] = None,
    reload: Annotated[
        bool,
        typer.Option("--reload", help="Restart the processes when code changes (development)."),
    ] = False,
    reload_dirs: Annotated[
        list[str] | None,
        typer.Option(
            "--reload-dir",
            metavar="DIR",
            help="Watch DIR for --reload [--app-dir].",
            show_default=False,
        ),
    ] = None,
    app_dir: Annotated[str, typer.Option(metavar="DIR", help="Import MODULE from DIR.")] = ".",
    log_format: Annotated[
        str | None,
        typer.Option(
            metavar="text|json",
            help="Log lines as text or JSON objects [text].",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR [INFO].", show_default=False
        ),
    ] = None,
) -> None:
    """Run a consumer worker: N supervised processes, each one QueueConsumer.

    Settings come from the options, then SAFESYNC_* environment variables, then the
    WorkerApp in MODULE, then the defaults. SIGTERM or Ctrl-C drains every process;
    a second one kills them. Exit codes: 0 stopped, 1 a worker kept failing, 2 bad
    configuration, 3 a server unreachable, 130 killed.
    """
    as_json = bool(ctx.parent and ctx.parent.params.get("as_json"))
    options: dict[str, object] = {
        "workers": workers,
        "stream": stream,
        "group": group,
        "concurrency": concurrency,
        "batch_size": batch_size,
        "redis_url": redis_url or _given(ctx, "redis_url"),
        "database_url": database_url or _given(ctx, "database_url"),
        "drain_timeout": drain_timeout,
        "stop_timeout": stop_timeout,
        "http_port": http_port,
        "http_host": http_host,
        "reload": reload,
        "reload_dirs": reload_dirs or (),
        "app_dir": app_dir,
        "log_format": log_format or ("json" if as_json else None),
        "log_level": log_level,
    }
    raise typer.Exit(run_worker(target, options))
