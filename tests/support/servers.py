"""Private server instances on free loopback ports, for tests that kill, pause or restart
a server. The shared servers on the standard ports are never touched."""

from __future__ import annotations

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


class PrivateRedis:
    """``redis-server`` in a temporary directory; AOF on by default so a SIGKILL loses
    nothing that was acknowledged to the client."""

    def __init__(self, *, appendonly: bool = True) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="safesync-redis-"))
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_listening(self.port, 10)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateMariaDB:
    """A private ``mariadbd`` on a free port. The first instance of a run initialises a
    template data directory (a few seconds); every instance starts from a copy of it."""

    _template: Path | None = None

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="safesync-mariadb-"))
        self.datadir = self.dir / "data"
        self.process: subprocess.Popen[bytes] | None = None

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
        self.process = subprocess.Popen(
            [
                binary, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
                "--bind-address=127.0.0.1", f"--socket={self.dir / 'sock'}",
                f"--pid-file={self.dir / 'pid'}", "--user=root", "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M", f"--log-error={self.dir / 'error.log'}",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_listening(self.port, 30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self, *extra: str) -> None:
        self.kill()
        self.start(*extra)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
