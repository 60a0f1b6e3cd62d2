"""Benchmark harness for safesync_async: ``python -m bench`` (see docs/benchmarks.md).

Three sections, each runnable alone with ``--only``:

* ``consumer``: end-to-end stream consumption into MariaDB/MySQL, safesync_async against
  the synchronous seed library and a hand-written raw-driver loop (worker subprocesses);
* ``primitives``: transfers with atomic updates, row locks, OCC and advisory locks, the
  library against a raw-driver loop and the seed library on MariaDB/MySQL and PostgreSQL
  (worker subprocesses), and the cost of DbSession over a bare SQLAlchemy AsyncConnection;
* ``memory``: peak RSS of one consumer working through a large backlog.
"""
