"""Progress hooks of the benchmark runner; the base class does nothing.

The runner never prints: the CLI subclasses :class:`BenchReporter` (rich progress), tests
record the calls. Hooks may be called from the runner's dispatch threads, one at a time
(the runner serializes them).
"""
from __future__ import annotations

from typing import Sequence


class BenchReporter:
    """No-op hooks, in the order the runner calls them."""

    def skipped(self, solution: str, reason: str) -> None:
        """``solution`` (``def/sol``) will not run on this device, and why."""

    def starting(self, total: int, device: str) -> None:
        """About to check and time ``total`` items on ``device`` (a slug)."""

    def building(self, solution: str) -> None:
        """Building (or loading from the cache) ``solution``."""

    def built(self, solution: str, error: str | None) -> None:
        """The build of ``solution`` ended; ``error`` is the BuildError text on failure."""

    def item_started(self, solution: str, workload_uuid: str, worker_device: str) -> None:
        """One (solution, workload) is sent to the worker on ``worker_device``."""

    def item_finished(self, evaluation) -> None:
        """One Evaluation is done (and appended to the registry when recording)."""

    def worker_replaced(self, worker_device: str, reason: str) -> None:
        """The worker on ``worker_device`` crashed or hung and was replaced."""

    def finished(self, evaluations: Sequence) -> None:
        """Every item is done."""
