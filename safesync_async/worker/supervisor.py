"""The runner: N worker processes, each one consumer, started, watched and stopped.

* Each process gets a consumer name ``<host>-<runner pid>-<index>``, the same when that
  index is restarted, so a restarted process re-reads its own pending entries first
  (the others claim them too once they are idle for ``claim_min_idle_ms``).
* A process that exits unexpectedly is restarted with exponential backoff
  (:class:`RestartPolicy`); one that keeps failing before its consumer ever ran makes
  the runner give up (exit 1).
* SIGTERM/SIGINT: every process drains (stop reading, finish running handlers within
  the drain timeout, ack what committed, hand back the rest) and the runner waits up to
  the stop timeout before killing what is left. A second signal kills them at once.
* Processes run in their own session (a terminal's Ctrl-C reaches only the runner, which
  forwards one SIGTERM) and stop by themselves if the runner disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from ..cli.operations import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .child import EXIT_CONFIGURATION, INDEX_VARIABLE, SPEC_VARIABLE, ChildSpec
from .exposition import MULTIPROC_VARIABLE, MetricsExposition
from .http import HealthSource, Probe, serve_http
from .probes import live_probe, ready_probe, worker_documents
from .reload import ChangeWatcher
from .restarts import RestartHistory, RestartPolicy
from .settings import WorkerSettings
from .slots import Incarnation, Slot, consumer_name, describe_exit
from .status import WorkerStatus, read_statuses
from .urls import database_url_for_display, redis_url_for_display

__all__ = ["Supervisor"]

_log = logging.getLogger("safesync_async.worker")

#: Seconds to read a process's last status lines after it exited.
_STATUS_GRACE = 1.0


class Supervisor:
    """Runs the worker processes until a signal (or a crash loop) stops them; see the
    module docstring. ``await Supervisor(settings).run()`` returns the exit code."""

    def __init__(self, settings: WorkerSettings, *, policy: RestartPolicy | None = None) -> None:
        self.settings = settings
        self._policy = policy or RestartPolicy()
        pid = os.getpid()
        self._slots = [
            Slot(i, consumer_name(i, pid), RestartHistory(self._policy))
            for i in range(settings.workers)
        ]
        self._exposition: MetricsExposition | None = None
        self._exit_code = EXIT_OK
        self._stop_event = asyncio.Event()
        self._changed = asyncio.Event()
        self._signals = 0

    # -- the whole run ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        server: asyncio.Server | None = None
        try:
            if self.settings.http_port is not None:
                self._exposition = MetricsExposition(self.settings.stream, self.settings.group)
                source = HealthSource(self._metrics, self.live, self.ready)
                server = await serve_http(self.settings.http_host, self.settings.http_port, source)
            self._log_start(server)
            async with asyncio.TaskGroup() as tasks:
                supervisors = [tasks.create_task(self._supervise(slot)) for slot in self._slots]
                watcher = tasks.create_task(self._watch_code()) if self.settings.reload else None
                await self._stop_event.wait()
                if watcher is not None:
                    watcher.cancel()
                await self._shutdown(supervisors)
        except BaseException:
            for slot in self._slots:  # they drain by themselves, the runner being gone
                if slot.current is not None:
                    slot.current.signal(signal.SIGTERM)
            raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if server is not None:
                server.close()
            if self._exposition is not None:
                self._exposition.close()
        _log.info(
            "runner stopped (exit code %d)",
            self._exit_code,
            extra={"event": "runner_stopped", "exit_code": self._exit_code},
        )
        return self._exit_code

    def _log_start(self, server: asyncio.Server | None) -> None:
        settings = self.settings
        http = ""
        if server is not None:
            host, port = server.sockets[0].getsockname()[:2]
            http = f"; metrics and health on http://{host}:{port}"
        database = settings.database_url
        _log.info(
            "runner started (pid %d): %d worker(s) x concurrency %d on stream %r, group %r; "
            "redis %s; database %s%s",
            os.getpid(),
            settings.workers,
            settings.concurrency,
            settings.stream,
            settings.group,
            redis_url_for_display(settings.redis_url),
            database_url_for_display(database) if database else "none (handler takes no session)",
            http,
            extra={"event": "runner_started", "workers": settings.workers},
        )

    def _on_signal(self, sig: signal.Signals) -> None:
        name = signal.Signals(sig).name
        self._signals += 1
        if self._signals == 1:
            _log.info(
                "%s received: stopping %d worker(s) (drain up to %g s, killed after %g s); "
                "send it again to kill them now",
                name,
                len(self._slots),
                self.settings.drain_timeout,
                self.settings.stop_timeout,
                extra={"event": "runner_stopping", "signal": name},
            )
            self._begin_stop()
            return
        _log.warning(
            "%s received again: killing the worker processes now",
            name,
            extra={"event": "runner_killing", "signal": name},
        )
        self._exit_code = EXIT_INTERRUPTED
        for slot in self._slots:
            if slot.current is not None:
                slot.current.signal(signal.SIGKILL)

    def _begin_stop(self, exit_code: int = EXIT_OK) -> None:
        if self._exit_code == EXIT_OK:
            self._exit_code = exit_code
        self._stop_event.set()

    async def _shutdown(self, supervisors: list[asyncio.Task[None]]) -> None:
        """SIGTERM every process, wait up to the stop timeout, kill what is left."""
        for slot in self._slots:
            if slot.current is not None:
                slot.current.signal(signal.SIGTERM)
        _done, late = await asyncio.wait(supervisors, timeout=self.settings.stop_timeout)
        if late:
            for slot in self._slots:
                if slot.current is not None and slot.current.alive:
                    _log.error(
                        "worker %d (pid %d) did not stop within %g s: killed",
                        slot.index,
                        slot.current.process.pid,
                        self.settings.stop_timeout,
                        extra={"event": "worker_killed", "worker": slot.index},
                    )
                    slot.current.signal(signal.SIGKILL)
            await asyncio.wait(late)

    # -- one worker slot -------------------------------------------------------------

    async def _supervise(self, slot: Slot) -> None:
        while not self._stop_event.is_set():
            incarnation, status_fd = await self._spawn(slot)
            code = await self._watch(incarnation, status_fd)
            slot.waiting = "restarting"
            if self._exposition is not None:
                self._exposition.process_exited(incarnation.process.pid)
            if self._stop_event.is_set():
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    _log.warning(
                        "worker %d (pid %d) ended with %s while stopping",
                        slot.index,
                        incarnation.process.pid,
                        describe_exit(code),
                        extra={"event": "worker_exited", "worker": slot.index, "exit_code": code},
                    )
                slot.waiting = "stopped"
                return
            if incarnation.restart_requested:
                slot.history.reset()
                continue
            if not await self._after_crash(slot, incarnation, code):
                return

    async def _spawn(self, slot: Slot) -> tuple[Incarnation, int]:
        read_fd, write_fd = os.pipe()
        spec = ChildSpec(self.settings, slot.index, slot.consumer_name, write_fd, os.getpid())
        env = {**os.environ, SPEC_VARIABLE: spec.to_json(), INDEX_VARIABLE: str(slot.index)}
        if self._exposition is not None:
            env[MULTIPROC_VARIABLE] = self._exposition.directory
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "safesync_async.worker.child",
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        now = time.monotonic()
        slot.current = Incarnation(process, started_at=now, last_seen=now)
        slot.waiting = None
        return slot.current, read_fd

    async def _watch(self, incarnation: Incarnation, status_fd: int) -> int:
        """Take the process's status reports until it exits; its exit code."""

        def on_status(status: WorkerStatus) -> None:
            incarnation.status = status
            incarnation.last_seen = time.monotonic()
            incarnation.ran = incarnation.ran or status.state == "running"

        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(read_statuses(status_fd, on_status))
            code = await incarnation.process.wait()
            incarnation.exited.set()
            await asyncio.wait({reader}, timeout=_STATUS_GRACE)
            reader.cancel()
        return code

    async def _after_crash(self, slot: Slot, incarnation: Incarnation, code: int) -> bool:
        """Log an unexpected exit and wait before the restart; False to stop supervising."""
        uptime = time.monotonic() - incarnation.started_at
        pid = incarnation.process.pid
        extra = {"worker": slot.index, "exit_code": code, "uptime_s": round(uptime, 3)}
        if self.settings.reload and not incarnation.ran:
            _log.error(
                "worker %d (pid %d) failed to start (%s); waiting for a code change",
                slot.index, pid, describe_exit(code),
                extra={"event": "worker_failed", **extra},
            )  # fmt: skip
            slot.waiting = "waiting for a code change"
            await self._wait_for_change()
            return True
        if code == EXIT_CONFIGURATION:
            _log.error(
                "worker %d cannot run with this configuration (see its message above); "
                "stopping the runner",
                slot.index,
                extra={"event": "worker_failed", **extra},
            )
            self._begin_stop(EXIT_USAGE)
            return False
        decision = slot.history.record_exit(uptime=uptime, started=incarnation.ran)
        if decision.give_up:
            _log.error(
                "worker %d failed to start %d times in a row (last: %s after %.1f s); giving "
                "up and stopping the runner",
                slot.index, decision.start_failures, describe_exit(code), uptime,
                extra={"event": "crash_loop", **extra},
            )  # fmt: skip
            self._begin_stop(EXIT_FAILED)
            return False
        level = logging.ERROR if decision.crash_loop else logging.WARNING
        loop_note = (
            f" (crash loop: {decision.crashes} exits in a row)" if decision.crash_loop else ""
        )
        _log.log(
            level,
            "worker %d (pid %d) exited unexpectedly: %s after %.1f s%s; restart %d in %.1f s",
            slot.index, pid, describe_exit(code), uptime, loop_note,
            slot.history.restarts, decision.delay,
            extra={"event": "worker_restarting", "restart": slot.history.restarts,
                   "delay_s": decision.delay, "crash_loop": decision.crash_loop, **extra},
        )  # fmt: skip
        if self._exposition is not None:
            self._exposition.record_restart()
        slot.waiting = f"restart in {decision.delay:.1f} s"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(decision.delay):
                await self._stop_event.wait()
        return not self._stop_event.is_set()

    # -- reload ----------------------------------------------------------------------

    async def _wait_for_change(self) -> None:
        changed = asyncio.create_task(self._changed.wait())
        stopping = asyncio.create_task(self._stop_event.wait())
        try:
            await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            stopping.cancel()

    async def _watch_code(self) -> None:
        watcher = ChangeWatcher(self.settings.reload_dirs)
        async for paths in watcher.changes():
            more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
            _log.info(
                "%s changed%s: restarting the workers",
                paths[0],
                more,
                extra={"event": "reloading", "changed": paths[:20]},
            )
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
            await self._restart_all()

    async def _restart_all(self) -> None:
        """Stop every running process gracefully; their supervisors start new ones."""
        running = [s.current for s in self._slots if s.current is not None and s.current.alive]
        for incarnation in running:
            incarnation.restart_requested = True
            incarnation.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.settings.stop_timeout):
                for incarnation in running:
                    await incarnation.exited.wait()
        except TimeoutError:
            for incarnation in running:
                incarnation.signal(signal.SIGKILL)

    # -- what the HTTP endpoint asks -------------------------------------------------

    def live(self) -> Probe:
        """Live unless a running process stopped reporting (its event loop is stuck)."""
        return live_probe(self._slots)

    def ready(self) -> Probe:
        """Ready when every process's consumer is ready and the runner is not stopping."""
        return ready_probe(self._slots, stopping=self._stop_event.is_set())

    async def _metrics(self) -> bytes:
        exposition = self._exposition
        assert exposition is not None
        workers = worker_documents(self._slots)
        running = sum(1 for worker in workers if worker["pid"] is not None)
        exposition.set_processes(running, sum(1 for worker in workers if worker["ready"]))
        return await asyncio.to_thread(exposition.render)
