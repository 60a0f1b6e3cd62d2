"""Private server instances on free loopback ports, for tests that kill, pause or restart
a server. The shared servers on the standard ports are never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server on port {port} did not start within {timeout} s")


class _PrivateServer:
    """A server process of ours in a temporary directory: kill, pause, resume, restart,
    close. Subclasses say how to start it."""

    stop_timeout = 10.0

    def __init__(self, prefix: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        raise NotImplementedError

    def _launch(self, argv: list[str], startup_timeout: float) -> None:
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, startup_timeout)

    def _running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (a paused process too): no shutdown, no final save."""
        if self._running():
            self.resume()
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP, returning once the process is stopped (a signal to a process running
        on another CPU takes effect a moment later: it could still answer meanwhile)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        wait_stopped(self.process.pid)

    def resume(self) -> None:
        if self._running():
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self, *extra: str) -> None:
        self.kill()
        self.start(*extra)

    def close(self) -> None:
        if self._running():
            self.resume()
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis(_PrivateServer):
    """``redis-server`` in a temporary directory; AOF on by default so a SIGKILL loses
    nothing that was acknowledged to the client."""

    def __init__(self, *, appendonly: bool = True) -> None:
        super().__init__("safesync-redis-")
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self._launch(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
                *extra,
            ],
            10,
        )  # fmt: skip


class PrivateMariaDB(_PrivateServer):
    """A private ``mariadbd`` on a free port. The first instance of a run initialises a
    template data directory (a few seconds); every instance starts from a copy of it."""

    _template: Path | None = None
    stop_timeout = 20.0

    def __init__(self) -> None:
        super().__init__("safesync-mariadb-")
        self.datadir = self.dir / "data"

    @property
    def url(self) -> str:
        return f"mysql+asyncmy://root@127.0.0.1:{self.port}/test"

    @classmethod
    def _template_dir(cls) -> Path:
        if cls._template is None:
            template = Path(tempfile.mkdtemp(prefix="safesync-mariadb-template-")) / "data"
            subprocess.run(
                [
                    "mariadb-install-db", "--no-defaults", f"--datadir={template}",
                    "--user=root", "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            (template / "test").mkdir(exist_ok=True)
            cls._template = template
        return cls._template

    def start(self, *extra: str) -> None:
        if not self.datadir.exists():
            shutil.copytree(self._template_dir(), self.datadir)
        binary = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self._launch(
            [
                binary, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
                "--bind-address=127.0.0.1", f"--socket={self.dir / 'sock'}",
                f"--pid-file={self.dir / 'pid'}", "--user=root", "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M", f"--log-error={self.dir / 'error.log'}",
                *extra,
            ],
            30,
        )  # fmt: skip


def _postgres_binaries() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    if on_path is None:
        raise RuntimeError("no PostgreSQL server binaries (postgres, initdb) found")
    return Path(on_path).parent


class PrivatePostgres(_PrivateServer):
    """A private PostgreSQL on a free port (socket in its own directory, fsync off). The
    first instance of a run initialises a template cluster (under a second); every
    instance starts from a copy of it. Run as the ``postgres`` user when we are root,
    since the server refuses to run as root."""

    _template: Path | None = None
    stop_timeout = 20.0

    def __init__(self) -> None:
        super().__init__("safesync-postgres-")
        self.datadir = self.dir / "data"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            shutil.chown(self.dir, self._user)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _template_dir(self) -> Path:
        cls = type(self)
        if cls._template is None:
            root = Path(tempfile.mkdtemp(prefix="safesync-postgres-template-"))
            if self._user is not None:
                shutil.chown(root, self._user)
            template = root / "data"
            subprocess.run(
                [str(_postgres_binaries() / "initdb"), "-D", str(template), "-A", "trust",
                 "-U", "postgres", "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                user=self._user,
            )  # fmt: skip
            cls._template = template
        return cls._template

    def start(self, *extra: str) -> None:
        if not self.datadir.exists():
            shutil.copytree(self._template_dir(), self.datadir)
            if self._user is not None:
                for path in [self.datadir, *self.datadir.rglob("*")]:
                    shutil.chown(path, self._user)
        self.process = subprocess.Popen(
            [
                str(_postgres_binaries() / "postgres"), "-D", str(self.datadir),
                "-p", str(self.port), "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off", "-c", "max_connections=50", *extra,
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self._user,
        )  # fmt: skip
        _wait_listening(self.port, 30)

    # Each connection is served by a child process of the postmaster, in a process group
    # of its own: pausing or killing the server means signalling the postmaster and every
    # child (the postmaster first, so that it forks no new one meanwhile).
    def _signal_all(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        children = _children(self.process.pid)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            for pid in [self.process.pid, *children]:
                wait_stopped(pid)

    def pause(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def kill(self) -> None:
        if self._running():
            assert self.process is not None
            self._signal_all(signal.SIGCONT)
            self._signal_all(signal.SIGKILL)
            self.process.wait(10)


def _children(parent: int) -> list[int]:
    """Process ids whose parent is ``parent`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def wait_stopped(pid: int, timeout: float = 2.0) -> None:
    """Wait until ``pid`` is in the stopped state (or gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("T", "t", "Z", "X"):
            return
        time.sleep(0.001)
