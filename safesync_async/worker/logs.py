"""Logging for the runner and its processes: one line per record, as text or as one JSON
object, tagged with the process (``runner``, ``worker-0``...), never with a password."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from .settings import LogSettings
from .urls import MASK, mask_urls_in

__all__ = ["JsonFormatter", "Redactor", "TextFormatter", "configure_logging"]

#: Shortest literal secret masked wherever it appears (shorter ones would mangle
#: ordinary words; inside a URL every password is masked whatever its length).
_MIN_SECRET_LENGTH = 4
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class Redactor:
    """Masks URL passwords and the given secrets in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted(
            (s for s in set(secrets) if len(s) >= _MIN_SECRET_LENGTH), key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        text = mask_urls_in(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2025-01-31T12:00:00.000Z INFO  [worker-1] logger: message``, passwords masked."""

    def __init__(self, role: str, redact: Redactor) -> None:
        super().__init__()
        self._role = role
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record.created)} {record.levelname:<7} [{self._role}] "
            f"{record.name}: {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self._redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, pid, message, the
    record's extra fields (``event``, ``worker``, ``exit_code``...) and the exception."""

    def __init__(self, role: str, redact: Redactor) -> None:
        super().__init__()
        self._role = role
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self._role,
            "pid": record.process,
            "message": self._redact(record.getMessage()),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and name not in document:
                document[name] = self._redact(value) if isinstance(value, str) else value
        if record.exc_info:
            document["exception"] = self._redact(self.formatException(record.exc_info))
        return json.dumps(document, default=str, ensure_ascii=False)


def configure_logging(
    settings: LogSettings, *, role: str, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Send every record (the library's, the user's) to stderr in the chosen format,
    replacing any handler configured before."""
    redact = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(role, redact) if settings.format == "json" else TextFormatter(role, redact)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    logging.captureWarnings(True)
