"""Benchmark harness for safesync_async: ``python -m bench`` (see docs/benchmarks.md).

Three sections, each runnable alone with ``--only``:

* ``consumer``: end-to-end stream consumption into MariaDB/MySQL, safesync_async against
  the synchronous seed library and a hand-written raw-driver loop (worker subprocesses);
* ``primitives``: atomic updates, OCC, row locks and advisory locks under contention,
  and the cost of DbSession over a bare SQLAlchemy AsyncConnection;
* ``memory``: peak RSS of one consumer working through a large backlog.
"""
