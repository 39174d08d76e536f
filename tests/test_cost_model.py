"""The cost model: a hand-checked example, and the properties every estimate must have."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from automation import cost_archive
from automation.cost_features import AlertTopicPlan, EfsPlan, PlannedFeatures, WafPlan
from automation.cost_model import (
    compare_archive_modes,
    cost_change,
    estimate,
    planned_features,
    with_simulators,
)
from automation.cost_prices import PriceKey, PriceTable, load_price_table
from automation.cost_traffic import measure_traffic, metered_units
from factory_core.archive_modes import ARCHIVE_MODES
from factory_core.fleet import FleetSettings
from factory_core.verb_results import TrafficProfile
from infra.settings import StackSettings, load_settings

# The eu-west-1 figures the example below is checked with, written out so the test does not move when the
# pinned table is refreshed: (per, [(up_to, usd), ...]).
EXAMPLE_PRICES: dict[PriceKey, tuple[int, list[tuple[float | None, float]]]] = {
    PriceKey.IOT_CONNECTIVITY: (1_000_000, [(None, 0.08)]),
    PriceKey.IOT_MESSAGING: (1_000_000, [(1e9, 1.00), (5e9, 0.80), (None, 0.70)]),
    PriceKey.IOT_RULES_TRIGGERED: (1_000_000, [(None, 0.15)]),
    PriceKey.IOT_ACTIONS_EXECUTED: (1_000_000, [(None, 0.15)]),
    PriceKey.S3_STANDARD_STORAGE: (1, [(51_200, 0.023), (512_000, 0.022), (None, 0.021)]),
    PriceKey.S3_PUT_REQUESTS: (1_000, [(None, 0.005)]),
    PriceKey.S3_GLACIER_STORAGE: (1, [(None, 0.0036)]),
    PriceKey.S3_GLACIER_TRANSITIONS: (1_000, [(None, 0.03)]),
    PriceKey.FIREHOSE_INGESTION: (1, [(None, 0.031)]),
    PriceKey.FARGATE_VCPU: (1, [(None, 0.04048)]),
    PriceKey.FARGATE_MEMORY: (1, [(None, 0.004445)]),
    PriceKey.ALB_HOURS: (1, [(None, 0.0252)]),
    PriceKey.ALB_LCU: (1, [(None, 0.008)]),
    PriceKey.NAT_HOURS: (1, [(None, 0.048)]),
    PriceKey.NAT_DATA: (1, [(None, 0.048)]),
    PriceKey.PUBLIC_IPV4: (1, [(None, 0.005)]),
    PriceKey.LOGS_INGESTION: (1, [(None, 0.57)]),
    PriceKey.LOGS_STORAGE: (1, [(None, 0.03)]),
    PriceKey.CLOUDWATCH_METRICS: (1, [(10_000, 0.30), (250_000, 0.10), (1_000_000, 0.05), (None, 0.02)]),
    PriceKey.SECRETS: (1, [(None, 0.40)]),
    PriceKey.CLOUD_MAP_INSTANCES: (1, [(None, 0.10)]),
    PriceKey.ROUTE53_PRIVATE_ZONE: (1, [(None, 0.50)]),
    PriceKey.EFS_STANDARD_STORAGE: (1, [(None, 0.33)]),
    PriceKey.WAF_WEB_ACL: (1, [(None, 5.00)]),
    PriceKey.WAF_RULES: (1, [(None, 1.00)]),
    PriceKey.WAF_REQUESTS: (1_000_000, [(None, 0.60)]),
    PriceKey.SNS_REQUESTS: (1_000_000, [(None, 0.50)]),
    PriceKey.KMS_KEYS: (1, [(None, 1.00)]),
}


def example_prices(region: str = "eu-west-1", **changes: float) -> PriceTable:
    figures: dict[str, Any] = {}
    for key, (per, tiers) in EXAMPLE_PRICES.items():
        if key.value in changes:
            tiers = [(None, changes[key.value])]
        figures[key.value] = {
            "description": key.value,
            "unit": key.value,
            "per": per,
            "tiers": [{"up_to": up_to, "usd": usd} for up_to, usd in tiers],
            "date": "2026-12-04",
            "source": "https://aws.amazon.com/pricing/",
        }
    return PriceTable.model_validate(
        {"region": region, "pinned_on": dt.date(2026, 12, 4), "how": "test figures", "figures": figures}
    )


def stack(**config: Any) -> StackSettings:
    values: dict[str, Any] = {
        "aws:region": "eu-west-1",
        "iotfactory:owner": "test",
        "iotfactory:simulatorCount": "2",
        "iotfactory:archiveMode": "batched",
        "iotfactory:allowedCidrs": '["198.51.100.0/24"]',
        "iotfactory:logRetentionDays": "30",
        "iotfactory:archiveLifecycle": '{"glacierAfterDays": 60, "expireAfterDays": 120}',
        "iotfactory:network": '{"availabilityZones": 2, "privateSubnets": true}',
        "iotfactory:containerInsights": "false",
        # The optional parts are off here (the hand-checked example predates them); tests turn them on.
        "iotfactory:monitoringHistory": '{"efs": false}',
        "iotfactory:waf": '{"enabled": false}',
    }
    values.update({f"iotfactory:{key}" if ":" not in key else key: value for key, value in config.items()})
    return load_settings("dev", values)


def traffic(**changes: float) -> TrafficProfile:
    base: dict[str, float] = {
        "telemetry_per_s": 10.0,
        "ground_truth_per_s": 0.0,
        "payload_bytes_per_message": 399.0,
        "topic_bytes_per_message": 61.0,
        "iot_units_per_message": 1.0,
        "rule_units_per_message": 1.0,
        "firehose_units_per_message": 1.0,
        "gzip_ratio": 0.1,
    }
    base.update(changes)
    return TrafficProfile(**base)  # type: ignore[arg-type]


def by_item(result: Any) -> dict[str, float]:
    return {f"{line.service}: {line.item}": line.monthly_usd for line in result.line_items}


def test_hand_checked_example() -> None:
    """Two simulators of the default fleet (10 machines at 1 s, QoS 1: one connection each), batched archive
    (64 MiB / 300 s), lifecycle Glacier at 60 days and expiry at 120, private subnets in 2 AZs, 30-day logs,
    no Container Insights, eu-west-1 prices. Traffic given exactly: 10 telemetry msg/s per simulator, no
    ground truth, payload 399 B + topic 61 B (1 increment of 5 KB everywhere), GZIP to 10 %.

    A month is 730 h = 2,628,000 s = 43,800 min = 30.4167 days; GB = 2^30 bytes.
    Messages M = 2 x 10 x 2,628,000 = 52,560,000.

    IoT Core   connectivity   2 connections x 43,800 min = 87,600 min x $0.08/M      =  $0.007008
               messaging      52,560,000 x $1.00/M                                    = $52.56
               rules          52,560,000 x $0.15/M                                    =  $7.884
               actions        52,560,000 x $0.15/M                                    =  $7.884
    Firehose   ingestion      52,560,000 x 5,120 B = 250.6256 GB x $0.031             =  $7.769394
    S3         Firehose gets 20 x 400 B = 8,000 B/s: 64 MiB fills in 8,389 s, so the 300 s interval flushes:
                              2,628,000 / 300 = 8,760 objects of 8,000 x 300 x 0.1 = 240,000 B (>= 128 KiB:
                              they transition); 69,120,000 B and 288 objects a day.
               PUTs           8,760 x $0.005/1,000                                    =  $0.0438
               Standard       (69,120,000 x 60 d + 288 x 60 d x 8 KiB) = 3.994217 GB x $0.023 = $0.091867
               Glacier        69,120,000 x 60 + 17,280 x 32 KiB + early deletion (90 - 60 = 30 d:
                              288 x 30 x (240,000 + 32 KiB)) = 6.584587 GB x $0.0036 =  $0.023705
               transitions    8,760 x $0.03/1,000                                     =  $0.2628
               steady state from month ceil(120 / 30.4167) + 1 = 5
    Fargate    simulators     2 x 0.25 vCPU x 730 h = 365 x $0.04048 = $14.7752; 2 x 0.5 GB x 730 = 730 x
                              $0.004445 = $3.24485; monitoring 0.5 vCPU and 1 GB: the same $14.7752, $3.24485
    ALB        730 h x $0.0252 = $18.396; 0.025 LCU x 730 h = 18.25 x $0.008 = $0.146
    VPC        public IPv4 of the ALB 2 x 730 x $0.005 = $7.30; NAT 2 x 730 x $0.048 = $70.08; NAT EIPs $7.30
               NAT data       MQTT: per message 399 + 61 + 69 (MQTT/TLS/TCP) + 66 (PUBACK) = 595 B x M
                              = 29.125437 GB x $0.048                                 =  $1.398021
                              logs: 1,004,000 B/day x 30.4167 = 0.028441 GB x $0.048 =  $0.001365
    Logs       ingestion      30,538,333 B = 0.028441 GB x $0.57                      =  $0.016211
               storage        0.028441 / 30.4167 x 30 d = 0.028052 GB x $0.03         =  $0.000842
    Secrets    2 sites x 1 generation + Grafana = 3 x $0.40 = $1.20
    Cloud Map  2 x $0.10 = $0.20;  Route 53 private zone $0.50

    Total $219.105113; variable (grows with messages: IoT messaging, rules, actions, Firehose, S3, NAT MQTT
    data) $77.917586; per million: $4.168667 total, $1.482450 variable.
    """
    result = estimate(stack(), example_prices(), traffic())
    expected = {
        "AWS IoT Core: connectivity": 0.007008,
        "AWS IoT Core: messaging": 52.56,
        "AWS IoT Core: rules triggered": 7.884,
        "AWS IoT Core: actions executed": 7.884,
        "Amazon Data Firehose: ingestion": 7.769394,
        "Amazon S3: PUT requests": 0.0438,
        "Amazon S3: Standard storage": 0.091867,
        "Amazon S3: Glacier storage": 0.023705,
        "Amazon S3: lifecycle transitions": 0.2628,
        "AWS Fargate: simulators vCPU": 14.7752,
        "AWS Fargate: simulators memory": 3.24485,
        "AWS Fargate: monitoring vCPU": 14.7752,
        "AWS Fargate: monitoring memory": 3.24485,
        "Elastic Load Balancing: ALB hours": 18.396,
        "Elastic Load Balancing: ALB capacity units": 0.146,
        "Amazon VPC: public IPv4 (ALB)": 7.30,
        "Amazon VPC: NAT gateway hours": 70.08,
        "Amazon VPC: public IPv4 (NAT)": 7.30,
        "Amazon VPC: NAT data processed (MQTT)": 1.398021,
        "Amazon VPC: NAT data processed (logs)": 0.001365,
        "CloudWatch Logs: ingestion": 0.016211,
        "CloudWatch Logs: storage": 0.000842,
        "Secrets Manager: secrets": 1.20,
        "AWS Cloud Map: registered instances": 0.20,
        "Amazon Route 53: private hosted zone": 0.50,
    }
    got = by_item(result)
    assert list(got) == list(expected)
    for name, usd in expected.items():
        assert got[name] == pytest.approx(usd, abs=1e-6), name
    assert result.messages_per_month == 52_560_000
    assert result.storage_steady_from_month == 5
    assert result.total_usd == pytest.approx(219.105113, abs=1e-5)
    assert result.variable_usd == pytest.approx(77.917586, abs=1e-5)
    assert result.usd_per_million == pytest.approx(4.168667, abs=1e-6)
    assert result.variable_usd_per_million == pytest.approx(1.482450, abs=1e-6)


def test_five_kb_rounding_at_5120_and_5121_bytes() -> None:
    assert [metered_units(size) for size in (1, 5_120, 5_121, 10_240, 10_241)] == [1, 1, 2, 2, 3]
    assert metered_units(0) == 1  # an empty message is still one message
    one, two = (
        estimate(
            stack(), example_prices(), traffic(iot_units_per_message=units, firehose_units_per_message=units)
        )
        for units in (metered_units(5_120), metered_units(5_121))
    )
    for item in ("AWS IoT Core: messaging", "Amazon Data Firehose: ingestion"):
        assert by_item(two)[item] == pytest.approx(2 * by_item(one)[item])


def test_measured_payloads_are_one_increment_and_cover_ground_truth() -> None:
    measured = measure_traffic(FleetSettings())
    assert measured.telemetry_per_s == 10.0
    assert 250 < measured.payload_bytes_per_message < 500 and 40 < measured.topic_bytes_per_message < 100
    assert measured.iot_units_per_message == measured.firehose_units_per_message == 1.0
    assert 0 < measured.ground_truth_per_s < 0.1  # faults and state changes: rare next to telemetry
    assert 0.02 < measured.gzip_ratio < 0.2


def test_ground_truth_events_are_messages_too() -> None:
    without = estimate(stack(), example_prices(), traffic())
    with_events = estimate(stack(), example_prices(), traffic(ground_truth_per_s=0.5))
    assert with_events.ground_truth_per_month == 2 * 0.5 * 2_628_000
    assert with_events.messages_per_month == without.messages_per_month + with_events.ground_truth_per_month
    assert by_item(with_events)["AWS IoT Core: messaging"] == pytest.approx(
        by_item(without)["AWS IoT Core: messaging"] * 10.5 / 10
    )


@pytest.mark.parametrize("mode", ARCHIVE_MODES)
@pytest.mark.parametrize("private", [False, True])
def test_more_simulators_never_cost_less(mode: str, private: bool) -> None:
    settings = stack(network=f'{{"privateSubnets": {str(private).lower()}}}', containerInsights="true")
    prices, measured = example_prices(), traffic(ground_truth_per_s=0.004)
    previous: dict[str, float] = {}
    previous_total = -1.0
    for count in range(0, 101):
        result = estimate(settings, prices, measured, simulators=count, archive_mode=mode)  # type: ignore[arg-type]
        assert result.total_usd >= previous_total, count
        for name, usd in by_item(result).items():
            assert usd >= previous.get(name, 0.0) - 1e-12, (count, name)
        previous, previous_total = by_item(result), result.total_usd


def test_lifecycle_transitions_reduce_storage_cost() -> None:
    prices, measured = example_prices(), traffic()

    def storage(glacier_after: int) -> float:
        settings = stack(archiveLifecycle=f'{{"glacierAfterDays": {glacier_after}, "expireAfterDays": 730}}')
        return sum(
            usd
            for name, usd in by_item(estimate(settings, prices, measured)).items()
            if name.startswith("Amazon S3") and "PUT" not in name
        )

    assert storage(30) < storage(90) < storage(365) < storage(729)


def test_small_objects_are_never_transitioned() -> None:
    """Direct mode writes one ~400-byte object per message: S3 does not move objects under 128 KiB."""
    result = estimate(stack(archiveMode="direct"), example_prices(), traffic())
    items = by_item(result)
    assert "Amazon S3: Glacier storage" not in items and "Amazon S3: lifecycle transitions" not in items
    standard = next(line for line in result.line_items if line.item == "Standard storage")
    # 20 msg/s x 399 B x 86,400 s x 120 days, all in Standard.
    assert standard.quantity_per_month == pytest.approx(20 * 399 * 86_400 * 120 / 2**30)
    assert by_item(result)["Amazon S3: PUT requests"] == pytest.approx(52_560_000 * 0.005 / 1_000)


def test_private_subnets_pay_nat_and_public_ones_do_not() -> None:
    prices, measured = example_prices(), traffic()
    private = by_item(
        estimate(stack(network='{"privateSubnets": true, "availabilityZones": 3}'), prices, measured)
    )
    public = by_item(estimate(stack(network='{"privateSubnets": false}'), prices, measured))
    assert private["Amazon VPC: NAT gateway hours"] == pytest.approx(3 * 730 * 0.048)
    assert private["Amazon VPC: NAT data processed (MQTT)"] > 0
    assert not [name for name in public if "NAT" in name]
    # Without NAT, every task (2 simulators + monitoring) has its own public address instead.
    assert public["Amazon VPC: public IPv4 (tasks)"] == pytest.approx(3 * 730 * 0.005)
    assert "Amazon VPC: public IPv4 (tasks)" not in private


def test_firehose_flushes_when_the_buffer_fills_first() -> None:
    # 100,000 msg/s of 399 B + newline = 40 MB/s: 64 MiB fills in 1.68 s, long before 300 s.
    writes = cost_archive.archive_writes("batched", 100_000, 399, 0.1, 64, 300, 1)
    assert writes.flush_period_s == pytest.approx(64 * 2**20 / 40_000_000)
    assert writes.objects_per_month == pytest.approx(2_628_000 / writes.flush_period_s)
    zero_buffering = cost_archive.archive_writes("batched", 20, 399, 0.1, 64, 0, 1)
    assert zero_buffering.flush_period_s == 1.0  # modelled as an upper bound: one object a second
    assert cost_archive.archive_writes("direct", 20, 399, 0.1, 64, 300, 1).objects_per_month == 20 * 2_628_000


def test_archive_modes_side_by_side() -> None:
    rows = {row.archive_mode: row for row in compare_archive_modes(stack(), example_prices(), traffic())}
    assert list(rows) == ["direct", "batched", "basic-ingest"]
    assert [row.configured for row in rows.values()] == [False, True, False]
    direct, batched, basic = (rows[mode].variable_usd_per_million or 0 for mode in rows)
    assert direct > batched > basic
    # Basic Ingest skips exactly the messaging charge: $1.00 per million messages of one increment.
    assert batched - basic == pytest.approx(1.00)
    result = estimate(stack(), example_prices(), traffic(), archive_mode="basic-ingest")
    assert by_item(result)["AWS IoT Core: messaging"] == 0.0


def test_pinned_us_east_1_prices_give_the_issue_figures_for_the_dev_fleet() -> None:
    """docs/infra.md quotes these; if a price refresh moves them, the docs must move with it."""
    dev = stack(
        archiveMode="direct",
        network='{"privateSubnets": false}',
        archiveLifecycle='{"glacierAfterDays": 30, "expireAfterDays": 120}',
    )
    rows = compare_archive_modes(dev, load_price_table("us-east-1"), measure_traffic(dev.fleet))
    variable = {row.archive_mode: round(row.variable_usd_per_million or 0, 2) for row in rows}
    assert variable == {"direct": 6.33, "batched": 1.44, "basic-ingest": 0.44}


def test_no_simulators_leaves_the_fixed_costs_and_no_per_million_figure() -> None:
    result = estimate(stack(), example_prices(), traffic(), simulators=0)
    assert result.messages_per_month == 0 and result.usd_per_million is None
    assert result.variable_usd == 0
    assert by_item(result)["Amazon VPC: NAT gateway hours"] > 0 and result.total_usd > 0


def test_container_insights_is_priced_only_when_enabled() -> None:
    on = by_item(estimate(stack(containerInsights="true"), example_prices(), traffic()))
    off = by_item(estimate(stack(containerInsights="false"), example_prices(), traffic()))
    # 12 cluster metrics + 3 services (2 sites + monitoring) x (15 + 10) = 87 metrics x $0.30.
    assert on["CloudWatch: Container Insights metrics"] == pytest.approx(87 * 0.30)
    assert "CloudWatch: Container Insights metrics" not in off


def test_planned_parts_are_priced_only_when_planned() -> None:
    assert planned_features(stack()) == PlannedFeatures()  # both settings off
    plain = by_item(estimate(stack(), example_prices(), traffic()))
    assert not [name for name in plain if name.split(":")[0] in ("Amazon EFS", "AWS WAF", "Amazon SNS")]
    features = PlannedFeatures(
        EfsPlan(stored_gb=10),
        WafPlan(rules=4, requests_per_month=2e6),
        AlertTopicPlan(publishes_per_month=1_000),
    )
    planned = by_item(estimate(stack(), example_prices(), traffic(), features=features))
    assert planned["Amazon EFS: Standard storage"] == pytest.approx(10 * 0.33)
    assert planned["AWS WAF: web ACL"] + planned["AWS WAF: rules"] == pytest.approx(5 + 4)
    assert planned["AWS WAF: requests"] == pytest.approx(2 * 0.60)
    assert planned["Amazon SNS: alert publishes"] == pytest.approx(1_000 * 0.50 / 1e6)
    # One key for the file system, one for the alert topic.
    assert planned["AWS KMS: customer managed keys"] == pytest.approx(2 * 1.00)


def test_waf_and_monitoring_history_follow_their_settings() -> None:
    """Both default on in production; on dev the history is on EFS and the WAF is off unless enabled."""
    defaults = {"monitoringHistory": "{}", "waf": "{}"}
    # A production stack also needs HTTPS (or to say it goes without) and its account (issue 12).
    production = planned_features(
        stack(
            production="true",
            allowInsecureHttp="true",
            accountId="123456789012",
            imageCache='{"enabled": false}',
            **defaults,
        )
    )
    assert production.waf is not None and production.waf.rules == 4
    assert production.efs is not None and 0.05 < production.efs.stored_gb < 1  # 2 simulators: megabytes
    dev = planned_features(stack(**defaults))
    assert dev.waf is None and dev.efs is not None
    assert planned_features(stack(waf='{"enabled": true}')).waf is not None
    assert planned_features(stack()).alert_topic is None
    subscribed = stack(
        alerting='{"snsSubscriptions": [{"protocol": "email", "endpoint": "oncall@example.com"}]}'
    )
    assert planned_features(subscribed).alert_topic == AlertTopicPlan(publishes_per_month=300)
    items = by_item(
        estimate(stack(monitoringHistory="{}", waf='{"enabled": true}'), example_prices(), traffic())
    )
    assert items["AWS KMS: customer managed keys"] == pytest.approx(1.00)
    assert items["AWS WAF: web ACL"] + items["AWS WAF: rules"] == pytest.approx(5 + 4)
    assert items["AWS WAF: requests"] == pytest.approx(2_000 * 730 * 0.60 / 1e6)
    assert 0 < items["Amazon EFS: Standard storage"] < 1


def test_cost_change_of_a_scale() -> None:
    before = stack(simulatorCount="2")
    after = with_simulators(before, 5)
    change = cost_change(before, after, prices=example_prices(), measure=lambda _fleet: traffic())
    totals = [estimate(s, example_prices(), traffic()).total_usd for s in (before, after)]
    assert (change.simulators_before, change.simulators_after) == (2, 5)
    assert (change.before_usd, change.after_usd) == pytest.approx(totals)
    assert change.delta_usd == pytest.approx(totals[1] - totals[0]) and change.delta_usd > 0
    assert change.describe().startswith(f"monthly estimate ${totals[0]:,.2f} -> ${totals[1]:,.2f} (+$")
    same = cost_change(before, before, prices=example_prices(), measure=lambda _fleet: traffic())
    assert same.delta_usd == 0


def test_cost_change_of_a_first_up_starts_from_nothing() -> None:
    change = cost_change(None, stack(), prices=example_prices(), measure=lambda _fleet: traffic())
    assert change.before_usd is None and change.simulators_before is None
    assert change.delta_usd == change.after_usd > 0
    assert change.describe().startswith("monthly estimate nothing -> $")


def test_cost_change_measures_each_fleet() -> None:
    before = stack()
    after = stack(fleet='{"lines_per_site": 4}')  # twice the machines per site
    doubled = cost_change(before, after, prices=example_prices())
    fixed_fleet = cost_change(before, after, prices=example_prices(), measure=lambda _fleet: traffic())
    assert doubled.delta_usd > 0 and fixed_fleet.delta_usd == 0


def test_with_simulators_keeps_the_programs_limit() -> None:
    with pytest.raises(ValidationError):
        with_simulators(stack(), 101)
    assert with_simulators(stack(), 100).simulator_count == 100


def test_every_line_explains_itself() -> None:
    result = estimate(stack(containerInsights="true"), example_prices(), traffic())
    for line in result.line_items:
        assert line.detail and line.unit and math.isfinite(line.monthly_usd) and line.quantity_per_month >= 0


def test_the_cost_model_needs_no_pulumi() -> None:
    code = (
        "import sys, automation.cost_model, automation.cost_report\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('pulumi', 'pulumi_aws'))\n"
        "print(','.join(loaded))"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
