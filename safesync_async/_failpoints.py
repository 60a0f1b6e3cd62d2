"""Named failpoints for fault-injection tests, configured by an environment variable.

``SAFESYNC_FAILPOINTS="consumer.after_commit=kill@37,relay.after_publish=raise@1"`` makes
the 37th pass through ``consumer.after_commit`` kill the process with SIGKILL, and the
first pass through ``relay.after_publish`` raise ``FailpointError``. Unset (the normal
case), ``failpoint()`` is one dictionary truth test.

Points: ``consumer.after_fetch``, ``consumer.in_handler``, ``consumer.before_commit``,
``consumer.after_commit``, ``ack.before``, ``ack.after``, ``dead_letter.before``,
``dead_letter.after``, ``relay.before_publish``, ``relay.after_publish``.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

__all__ = ["FailpointError", "failpoint"]

ENV_VAR = "SAFESYNC_FAILPOINTS"


class FailpointError(RuntimeError):
    """Raised by a failpoint configured with the ``raise`` action."""


@dataclass
class _Failpoint:
    action: str
    at: int
    hits: int = 0


def _parse(spec: str) -> dict[str, _Failpoint]:
    points: dict[str, _Failpoint] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rule = item.partition("=")
        action, _, at = rule.partition("@")
        if action not in ("kill", "raise"):
            raise ValueError(f"{ENV_VAR}: unknown action {action!r} in {item!r}")
        points[name.strip()] = _Failpoint(action, int(at or 1))
    return points


_ACTIVE = _parse(os.environ.get(ENV_VAR, ""))


def failpoint(name: str) -> None:
    """Trigger the failpoint ``name`` if it is configured and its turn has come."""
    if not _ACTIVE:
        return
    point = _ACTIVE.get(name)
    if point is None:
        return
    point.hits += 1
    if point.hits != point.at:
        return
    if point.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FailpointError(f"failpoint {name} triggered at hit {point.hits}")
