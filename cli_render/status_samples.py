"""Foreground `up` without a live view: a `StatusSample` event every few seconds while the stack runs."""

from __future__ import annotations

import threading
from collections.abc import Callable

from factory_core.local_results import LocalStatus
from factory_core.progress_events import ProgressEvent, StatusSample


def run_with_status_samples(
    run: Callable[[], None],
    sample: Callable[[], LocalStatus],
    emit: Callable[[ProgressEvent], None],
    *,
    every_s: float,
    thread_name: str,
) -> None:
    """Run `run`; meanwhile, every `every_s`, emit the pipeline status `sample()` reports (if any)."""
    done = threading.Event()

    def report() -> None:
        while not done.wait(every_s):
            status = sample()
            if status.simulators is not None and status.pipeline is not None:
                emit(StatusSample(status.simulators, status.pipeline))

    thread = threading.Thread(target=report, name=thread_name, daemon=True)
    thread.start()
    try:
        run()
    finally:
        done.set()
