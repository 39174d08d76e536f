"""What one simulator sends, measured from the simulator's own model rather than guessed.

`measure_traffic(fleet)` runs the site model (no network, no clock) for a bounded sample and
returns a `TrafficProfile`: message rates, payload and topic sizes, how many 5 KB metering
increments a message costs at each service, and how well the archive's JSON lines compress.
The cost model takes the profile as input, so its tests can hand it exact numbers.

It imports the simulator's model (`simulator.model`), which is pure (no sockets, clocks or globals),
so measuring costs no I/O; it is the only part of automation/ that reads the simulator package.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

from factory_core.fleet import FleetSettings
from factory_core.verb_results import TrafficProfile

# AWS IoT Core (messages, rules, actions) and Firehose (per record) meter in 5 KB steps of 5,120 bytes.
METERING_INCREMENT_BYTES = 5_120
# The IoT rule's Firehose action appends this separator to every record (infra: RECORD_SEPARATOR).
FIREHOSE_SEPARATOR_BYTES = 1
# A sample long enough to see the fleet's ground-truth events, short enough for a CLI call (~0.8 s).
SAMPLE_SECONDS = 3_600.0
SAMPLE_MAX_MESSAGES = 40_000
_SAMPLE_START_EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, like the dry run's default
_GZIP_LEVEL = 6  # Firehose's level is not documented; zlib's default


def metered_units(size_bytes: int, increment: int = METERING_INCREMENT_BYTES) -> int:
    """Increments a message of `size_bytes` is billed as: 1..5,120 -> 1, 5,121 -> 2; at least 1."""
    return max(1, math.ceil(size_bytes / increment))


def measure_traffic(
    fleet: FleetSettings,
    sample_s: float = SAMPLE_SECONDS,
    max_messages: int = SAMPLE_MAX_MESSAGES,
) -> TrafficProfile:
    """Sample one site's model for `sample_s` wall seconds of schedule (fewer for large sites).

    Every machine samples once per round (one publish interval). Ground-truth events are counted from
    the second round on: the first round carries each machine's start event, which happens once per
    task start, not once per interval.
    """
    return _measure(fleet.model_dump_json(), sample_s, max_messages)


@lru_cache(maxsize=8)
def _measure(fleet_json: str, sample_s: float, max_messages: int) -> TrafficProfile:
    # Imported here: the model is pure but not small, and only this function needs it.
    from simulator.model.site import SiteModel

    fleet = FleetSettings.model_validate_json(fleet_json)  # the cache key: settings hold dicts
    model = SiteModel(fleet, 0, _SAMPLE_START_EPOCH_MS)
    machines = len(model.machines)
    rounds_wanted = max(2, math.ceil(sample_s / fleet.publish_interval_s))
    rounds = max(2, min(rounds_wanted, max_messages // machines))
    sizes = _Sizes()
    ground_truth_after_first = 0
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    raw_bytes = compressed_bytes = 0
    for round_index in range(rounds):
        lines: list[bytes] = []
        for machine_index in range(machines):
            for message in model.sample(machine_index):
                sizes.add(len(message.payload), len(message.topic.encode()))
                lines.append(message.payload)
                if message.kind != "telemetry" and round_index > 0:
                    ground_truth_after_first += 1
        chunk = b"\n".join(lines) + b"\n"
        raw_bytes += len(chunk)
        compressed_bytes += len(compressor.compress(chunk))
    compressed_bytes += len(compressor.flush())
    rounds_per_s = 1.0 / fleet.publish_interval_s
    return TrafficProfile(
        telemetry_per_s=fleet.publishes_per_second_per_site,
        ground_truth_per_s=ground_truth_after_first / (rounds - 1) * rounds_per_s,
        payload_bytes_per_message=sizes.payload_bytes / sizes.messages,
        topic_bytes_per_message=sizes.topic_bytes / sizes.messages,
        iot_units_per_message=sizes.iot_units / sizes.messages,
        rule_units_per_message=sizes.rule_units / sizes.messages,
        firehose_units_per_message=sizes.firehose_units / sizes.messages,
        gzip_ratio=compressed_bytes / raw_bytes,
        sampled_messages=sizes.messages,
        sampled_s=rounds * fleet.publish_interval_s,
    )


class _Sizes:
    """Running totals of a sample's sizes and metering increments."""

    def __init__(self) -> None:
        self.messages = self.payload_bytes = self.topic_bytes = 0
        self.iot_units = self.rule_units = self.firehose_units = 0

    def add(self, payload: int, topic: int) -> None:
        self.messages += 1
        self.payload_bytes += payload
        self.topic_bytes += topic
        self.iot_units += metered_units(payload + topic)
        self.rule_units += metered_units(payload)
        self.firehose_units += metered_units(payload + FIREHOSE_SEPARATOR_BYTES)
