"""Connection settings shared by the examples: environment variables with local defaults."""

from __future__ import annotations

import os

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DATABASE_URL = os.environ.get("SAFESYNC_DATABASE_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("SAFESYNC_REDIS_URL", "redis://127.0.0.1:6379/0")


def make_engine() -> AsyncEngine:
    """An engine as a service would create it once at start-up."""
    return create_async_engine(DATABASE_URL, pool_size=10, pool_pre_ping=True)
