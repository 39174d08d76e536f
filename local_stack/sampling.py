"""The supervisor's view of the pipeline: its exporters sampled on a thread of their own.

Sampling reads only HTTP exporters and never touches a process, so it runs beside the main thread
(which owns the processes) and hands over each snapshot by replacing one reference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from local_stack.status_view import PipelineSampler, PipelineSnapshot, read_exposition

SAMPLE_INTERVAL_S = 1.0
# Until the first message is archived: `up --detach` waits for exactly that moment.
EARLY_SAMPLE_INTERVAL_S = 0.2


class PipelineMonitor:
    """Totals and rates of the simulators' and the rule runner's exporters, and when data first flowed."""

    def __init__(
        self,
        exporters: Callable[[], Mapping[str, int]],
        on_first_archive: Callable[[float], None],
    ) -> None:
        """`exporters`: service name -> metrics port of every running exporter, asked before each sample."""
        self._exporters = exporters
        self._on_first_archive = on_first_archive
        self._sampler = PipelineSampler()
        self._sampler_lock = threading.Lock()
        self.snapshot = PipelineSnapshot()
        self.first_archived_at: float | None = None

    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self._run, args=(stop,), name="sampler", daemon=True).start()

    def forget(self, service: str) -> None:
        """The service's process is being replaced: its counters start again from zero."""
        with self._sampler_lock:
            self._sampler.forget(service)

    def settle(self, service: str, final_exposition: Path) -> None:
        """The service exited cleanly and left its final counts in `final_exposition`: add them."""
        samples = read_exposition(final_exposition)
        if samples is None:
            return
        with self._sampler_lock:
            self.snapshot = self._sampler.settle(service, samples, self.snapshot)

    def sample_once(self) -> PipelineSnapshot:
        # Replaced under the lock, so a sample taken before a `settle` never overwrites it.
        with self._sampler_lock:
            snapshot = self._sampler.sample(self._exporters(), still_expected=self._exporters)
            self.snapshot = snapshot
        if self.first_archived_at is None and snapshot.archived_total > 0:
            self.first_archived_at = time.time()
            self._on_first_archive(self.first_archived_at)
        return snapshot

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.sample_once()
            stop.wait(SAMPLE_INTERVAL_S if self.first_archived_at else EARLY_SAMPLE_INTERVAL_S)
