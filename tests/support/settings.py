"""Where the test servers are: environment variables with loopback defaults."""

from __future__ import annotations

import os

DATABASE_URL = os.environ.get("SAFESYNC_DATABASE_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
POSTGRES_URL = os.environ.get(
    "SAFESYNC_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SAFESYNC_REDIS_URL", "redis://127.0.0.1:6379/0")
