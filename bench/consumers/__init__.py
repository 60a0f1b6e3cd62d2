"""The consumer implementations compared in the consumer section, one module each."""

from __future__ import annotations

from ..protocol import WorkerSpec
from .base import Variant


def make_variant(spec: WorkerSpec) -> Variant:
    """The implementation a worker process runs (imported lazily: the seed library is
    only needed by seed workers)."""
    if spec.kind == "safesync":
        from .safesync import SafesyncConsumer

        return SafesyncConsumer(spec)
    if spec.kind == "safesync-ordered":
        from .ordered import KeyOrderedConsumer

        return KeyOrderedConsumer(spec)
    if spec.kind == "seed":
        from .seed import SeedConsumer

        return SeedConsumer(spec)
    if spec.kind == "runner":
        from .runner import RunnerConsumer

        return RunnerConsumer(spec)
    if spec.kind == "raw":
        from .raw import RawLoop

        return RawLoop(spec)
    raise ValueError(f"unknown consumer kind {spec.kind!r}")
