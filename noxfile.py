"""Developer and CI tasks: ``nox`` runs lint, type checks and the tests; ``nox -s demo``
runs the end-to-end demo (on embedded servers unless URLs are given). The tests reuse
MariaDB/MySQL, PostgreSQL and Redis already listening on loopback (or at
SAFESYNC_DATABASE_URL / SAFESYNC_POSTGRES_URL / SAFESYNC_REDIS_URL); where a Docker engine
is available and nothing listens, they start compose.yaml."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
DATABASE_URL = os.environ.get("SAFESYNC_DATABASE_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
POSTGRES_URL = os.environ.get(
    "SAFESYNC_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SAFESYNC_REDIS_URL", "redis://127.0.0.1:6379/0")


def _listening(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or default_port)
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def _ensure_services(session: nox.Session) -> None:
    missing = [
        name
        for name, url, port in (
            ("database", DATABASE_URL, 3306),
            ("postgresql", POSTGRES_URL, 5432),
            ("redis", REDIS_URL, 6379),
        )
        if not _listening(url, port)
    ]
    if not missing:
        return
    if _docker_available():
        session.run("docker", "compose", "up", "--detach", "--wait", external=True)
        return
    session.error(
        f"not reachable: {', '.join(missing)} (database {DATABASE_URL}, postgresql "
        f"{POSTGRES_URL}, redis {REDIS_URL}). Start them locally, run `docker compose up -d "
        "--wait`, or point SAFESYNC_DATABASE_URL / SAFESYNC_POSTGRES_URL / SAFESYNC_REDIS_URL "
        "at running servers."
    )


def _install(session: nox.Session, *groups: str) -> None:
    """The package with every extra (the tests cover them all) and the given groups."""
    session.install("-e", ".[fastapi,cli,otel,postgres,embedded,pydantic]")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against real servers, without the long fault scenarios (marked
    ``slow``; args after -- go to pytest, so ``-- -m ''`` runs everything)."""
    _install(session, "test")
    _ensure_services(session)
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session
def faults(session: nox.Session) -> None:
    """Every fault-injection scenario, long ones included, and the reliability report
    they measure (written to docs/reliability.md)."""
    _install(session, "test")
    _ensure_services(session)
    session.env["SAFESYNC_RELIABILITY_REPORT"] = "docs/reliability.md"
    session.env["SAFESYNC_MODEL_EXAMPLES"] = "120"  # the model-based tests, longer
    session.run("pytest", "-m", "faults or model", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark: the consumer and the database primitives (MariaDB/MySQL and
    PostgreSQL) against the synchronous seed library and raw-driver loops, memory (args
    after -- go to ``python -m bench``)."""
    _install(session, "bench")
    _ensure_services(session)
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and the examples."""
    _install(session, "typecheck")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode (any warning fails), after checking
    that the code blocks of the pages are current. ``nox -s docs -- DIR`` writes the
    site to DIR instead of a directory under .nox/."""
    session.run(sys.executable, "docs/_snippets.py", "--check", external=True)
    _install(session, "docs")
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # Material's end-of-life banner on stderr
    if session.posargs:
        site = os.path.abspath(session.posargs[0])
    else:
        site = os.path.join(os.path.abspath(session.create_tmp()), "site")
    session.run("mkdocs", "build", "--strict", "--site-dir", site)
    index = os.path.join(site, "index.html")
    session.log(f"site written to {site} (open file://{index}, or run `mkdocs serve`)")


@nox.session(venv_backend="none")
def snippets(session: nox.Session) -> None:
    """Rewrite the code blocks of README.md and docs/ from the examples they show (run
    after editing an example); ``nox -s snippets -- --check`` only checks."""
    session.run(sys.executable, "docs/_snippets.py", *session.posargs, external=True)


@nox.session
def demo(session: nox.Session) -> None:
    """The end-to-end demo: publish transfers, consume them into the database, verify.
    With no SAFESYNC_DATABASE_URL / SAFESYNC_REDIS_URL it runs on embedded servers."""
    _install(session)
    session.run("python", "-m", "examples.demo", *session.posargs)
