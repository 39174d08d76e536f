"""The archive's share of the bill: S3 objects, their lifecycle, and Firehose batching.

Pure arithmetic over the stack's settings and the measured traffic; `automation/cost_model.py` turns
the figures into priced line items. Storage is reported at steady state: once the oldest objects
expire, every day adds as much as it removes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from factory_core.archive_modes import ArchiveMode, uses_firehose

HOURS_PER_MONTH = 730.0  # AWS's own convention for monthly figures
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3_600
DAYS_PER_MONTH = HOURS_PER_MONTH / 24
GIB = 1 << 30  # AWS bills storage and transfer "GB" as 2^30 bytes
MIB = 1 << 20  # Firehose buffer sizes are MiB, applied before compression

# S3 lifecycle does not transition objects smaller than 128 KiB (the default since September 2024;
# infra/components/storage.py does not override it), so one-object-per-message archives stay in Standard.
GLACIER_MIN_TRANSITION_BYTES = 128 * 1024
# Every object in Glacier Flexible Retrieval is billed 32 KiB of index at the Glacier rate and 8 KiB of
# metadata at the Standard rate, and for at least 90 days (earlier deletion is charged the remainder).
GLACIER_INDEX_BYTES = 32 * 1024
GLACIER_STANDARD_METADATA_BYTES = 8 * 1024
GLACIER_MINIMUM_DAYS = 90
# A zero buffer interval flushes as soon as Firehose can; one object per second is the upper bound used.
ZERO_BUFFERING_FLUSH_S = 1.0


@dataclass(frozen=True)
class ArchiveWrites:
    """What reaches S3 each month."""

    objects_per_month: float
    stored_bytes_per_month: float  # as stored: the message itself (direct) or GZIP JSON lines (batched)
    object_bytes: float  # mean object size
    flush_period_s: float | None  # batched: how often Firehose writes an object (None: direct)


def archive_writes(
    mode: ArchiveMode,
    messages_per_s: float,
    mean_payload_bytes: float,
    gzip_ratio: float,
    buffer_size_mb: int,
    buffer_interval_s: int,
    separator_bytes: int,
) -> ArchiveWrites:
    """Objects and bytes per month: one object per message (direct) or one per Firehose flush."""
    if messages_per_s <= 0:
        return ArchiveWrites(0.0, 0.0, 0.0, None)
    if not uses_firehose(mode):
        objects = messages_per_s * SECONDS_PER_MONTH
        return ArchiveWrites(objects, objects * mean_payload_bytes, mean_payload_bytes, None)
    ingest_bytes_per_s = messages_per_s * (mean_payload_bytes + separator_bytes)
    # Firehose flushes at whichever comes first: the buffer filling, or the interval passing.
    fill_s = buffer_size_mb * MIB / ingest_bytes_per_s
    interval_s = buffer_interval_s if buffer_interval_s > 0 else ZERO_BUFFERING_FLUSH_S
    period_s = min(fill_s, interval_s)
    objects = SECONDS_PER_MONTH / period_s
    stored = ingest_bytes_per_s * SECONDS_PER_MONTH * gzip_ratio
    return ArchiveWrites(objects, stored, stored / objects, period_s)


@dataclass(frozen=True)
class ArchiveStorage:
    """Steady-state storage of the archive bucket under its Glacier-then-expire lifecycle."""

    standard_gb_months: float
    glacier_gb_months: float  # including per-object index and any early-deletion charge
    transitions_per_month: float
    transitions: bool  # False: objects are under 128 KiB and stay in Standard until they expire
    steady_from_month: int  # the first month in which storage no longer grows


def archive_storage(writes: ArchiveWrites, glacier_after_days: int, expire_after_days: int) -> ArchiveStorage:
    """GB-months billed per month once the lifecycle has reached steady state."""
    steady_from = math.ceil(expire_after_days / DAYS_PER_MONTH) + 1
    per_day_bytes = writes.stored_bytes_per_month / DAYS_PER_MONTH
    objects_per_day = writes.objects_per_month / DAYS_PER_MONTH
    transitions = writes.object_bytes >= GLACIER_MIN_TRANSITION_BYTES
    if not transitions:
        return ArchiveStorage(per_day_bytes * expire_after_days / GIB, 0.0, 0.0, False, steady_from)
    glacier_days = expire_after_days - glacier_after_days
    objects_in_glacier = objects_per_day * glacier_days
    standard = per_day_bytes * glacier_after_days + objects_in_glacier * GLACIER_STANDARD_METADATA_BYTES
    glacier = per_day_bytes * glacier_days + objects_in_glacier * GLACIER_INDEX_BYTES
    # Deleted before 90 days in Glacier: each object is still billed for the days it did not stay.
    short_days = max(0, GLACIER_MINIMUM_DAYS - glacier_days)
    early = objects_per_day * short_days * (writes.object_bytes + GLACIER_INDEX_BYTES)
    return ArchiveStorage(
        standard_gb_months=standard / GIB,
        glacier_gb_months=(glacier + early) / GIB,
        transitions_per_month=writes.objects_per_month,
        transitions=True,
        steady_from_month=steady_from,
    )
