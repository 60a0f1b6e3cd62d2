"""Runnable examples; each module's ``main()`` is also run by the test suite."""
