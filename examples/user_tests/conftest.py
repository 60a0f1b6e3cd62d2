"""A user's conftest.py: one line enables the library's fixtures."""

pytest_plugins = ["safesync_async.testing"]
