"""Helpers shared by the project's own tests (not shipped)."""
