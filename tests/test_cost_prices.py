"""Pinned price tables and `--refresh-prices` against recorded Price List API responses (botocore Stubber)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support_pricing import recorded_calls, stubbed_pricing_client

from automation import cost_prices
from automation.cost_prices import PriceFigure, PriceKey, load_price_table, save_price_table
from automation.price_refresh import QUERIES, fetch_figure, refresh_price_table
from factory_core.errors import OperationFailed, UsageError

ROOT = Path(__file__).resolve().parent.parent
TODAY = dt.date(2026, 12, 5)


def stack_regions() -> set[str]:
    regions = set()
    for path in ROOT.glob("Pulumi.*.yaml"):
        config = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("config") or {}
        if "aws:region" in config:
            regions.add(config["aws:region"])
    return regions


def test_every_region_the_stacks_use_has_a_complete_pinned_table() -> None:
    assert stack_regions() <= set(cost_prices.pinned_regions())
    for region in cost_prices.pinned_regions():
        table = load_price_table(region)
        assert set(table.figures) == set(PriceKey)
        for key, figure in table.figures.items():
            assert figure.source.startswith("https://aws.amazon.com/"), key
            assert figure.date == table.pinned_on, key
            assert figure.first_tier_usd() > 0, key


def test_pinned_tables_are_written_the_way_a_refresh_writes_them(tmp_path: Path) -> None:
    for region in cost_prices.pinned_regions():
        written = save_price_table(load_price_table(region), tmp_path)
        assert written.read_text(encoding="utf-8") == cost_prices.table_path(region).read_text(
            encoding="utf-8"
        )


def test_tiers_price_each_slice_at_its_own_rate() -> None:
    messaging = load_price_table("us-east-1").figure(PriceKey.IOT_MESSAGING)
    assert messaging.cost(1_000_000) == pytest.approx(1.00)
    # First billion at $1.00/M, the next billion at $0.80/M.
    assert messaging.cost(2_000_000_000) == pytest.approx(1_000 + 800)
    assert messaging.cost(6_000_000_000) == pytest.approx(1_000 + 4_000 * 0.80 + 1_000 * 0.70)


def test_tiers_must_ascend_and_end_open() -> None:
    base: dict[str, Any] = {"description": "x", "unit": "x", "per": 1, "date": "2026-12-04", "source": "s"}
    with pytest.raises(ValueError, match="last tier"):
        PriceFigure.model_validate({**base, "tiers": [{"up_to": 10, "usd": 1}]})
    with pytest.raises(ValueError, match="ascending"):
        PriceFigure.model_validate(
            {**base, "tiers": [{"up_to": 10, "usd": 1}, {"up_to": 5, "usd": 1}, {"up_to": None, "usd": 1}]}
        )


def test_a_region_without_a_table_is_one_line_naming_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        load_price_table("ap-south-2")
    message = str(raised.value)
    assert "no pinned prices for region ap-south-2" in message and "--refresh-prices" in message
    assert "eu-west-1" in message and "\n" not in message
    (tmp_path / "eu-west-1.json").write_text('{"region": "eu-west-1"', encoding="utf-8")
    with pytest.raises(UsageError, match=r"eu-west-1.json: not valid JSON"):
        load_price_table("eu-west-1", tmp_path)
    (tmp_path / "eu-west-1.json").write_text(
        cost_prices.table_path("us-east-1").read_text(encoding="utf-8"), encoding="utf-8"
    )
    with pytest.raises(UsageError, match="holds prices for us-east-1, not eu-west-1"):
        load_price_table("eu-west-1", tmp_path)


# --- refresh from the Price List API --------------------------------------------------------------


def test_the_recording_asks_what_the_queries_ask() -> None:
    assert [call["figure"] for call in recorded_calls()] == [key.value for key in QUERIES]
    for call in recorded_calls():
        for page in call["pages"]:
            assert all(isinstance(item, str) for item in page["PriceList"])  # the API's JSON strings


def test_refresh_reads_every_answered_figure_and_keeps_the_rest(tmp_path: Path) -> None:
    client, stubber = stubbed_pricing_client(recorded_calls())
    pinned = load_price_table("eu-west-1")
    result = refresh_price_table("eu-west-1", client, pinned, TODAY)
    stubber.assert_no_pending_responses()

    table = result.table
    assert table.pinned_on == TODAY and "Price List API" in table.how
    nat = table.figure(PriceKey.NAT_HOURS)
    assert nat.first_tier_usd() == pytest.approx(0.052)  # the recording's price, not the pinned 0.048
    assert nat.date == TODAY and nat.source.startswith("AWS Price List API, AmazonEC2 SKU ")
    assert "(price list of 2026-11-20)" in nat.source
    # Per-unit API prices become the figure's `per`: $0.000001 per message -> $1.00 per million.
    messaging = table.figure(PriceKey.IOT_MESSAGING)
    assert [(tier.up_to, tier.usd) for tier in messaging.tiers] == [
        (1_000_000_000, 1.0),
        (5_000_000_000, 0.8),
        (None, 0.7),
    ]
    # Page one held only a Fargate Spot product, whose usage type merely contains the one asked for.
    assert table.figure(PriceKey.FARGATE_MEMORY).first_tier_usd() == pytest.approx(0.004445)
    assert result.kept.keys() == {PriceKey.CLOUD_MAP_INSTANCES}
    assert table.figure(PriceKey.CLOUD_MAP_INSTANCES) == pinned.figure(PriceKey.CLOUD_MAP_INSTANCES)
    assert len(result.refreshed) == len(PriceKey) - 1
    assert "kept pinned: cloud_map_instances (none with usage type RegisteredResource" in result.summary()

    path = save_price_table(table, tmp_path)
    assert load_price_table("eu-west-1", tmp_path) == table and path.name == "eu-west-1.json"


def test_refresh_without_a_pinned_table_fails_on_a_figure_nobody_answers() -> None:
    client, _ = stubbed_pricing_client(recorded_calls())
    with pytest.raises(OperationFailed, match="no price for cloud_map_instances in eu-west-1"):
        refresh_price_table("eu-west-1", client, None, TODAY)


def test_a_free_first_slice_is_left_out() -> None:
    """The model leaves the free tier out: a $0 first dimension does not become a tier."""
    call = next(call for call in recorded_calls() if call["figure"] == "logs_ingestion")
    product = json.loads(call["pages"][0]["PriceList"][0])
    (term,) = product["terms"]["OnDemand"].values()
    (paid,) = term["priceDimensions"].values()
    free = dict(paid, beginRange="0", endRange="5", pricePerUnit={"USD": "0.0000000000"}, rateCode="free")
    paid["beginRange"] = "5"
    term["priceDimensions"] = {"free": free, "paid": paid}
    page = {"FormatVersion": "aws_v1", "PriceList": [json.dumps(product)]}
    client, _ = stubbed_pricing_client([{"request": call["request"], "pages": [page]}])
    figure = fetch_figure(
        client,
        "eu-west-1",
        PriceKey.LOGS_INGESTION,
        QUERIES[PriceKey.LOGS_INGESTION],
        load_price_table("eu-west-1").figure(PriceKey.LOGS_INGESTION),
        TODAY,
    )
    assert [(tier.up_to, tier.usd) for tier in figure.tiers] == [(None, pytest.approx(0.57))]
