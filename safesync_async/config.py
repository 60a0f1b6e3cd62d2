"""Seed-compatible import path: ``from safesync_async.config import QueueConfig``."""

from __future__ import annotations

from .queue.config import QueueConfig

__all__ = ["QueueConfig"]
