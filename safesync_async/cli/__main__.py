"""``python -m safesync_async.cli``: the ``safesync`` command."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    main()
