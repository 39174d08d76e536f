"""`python cli.py cost`: the estimate from the stack files in the repository, without Pulumi or AWS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from support_cloud import isolate_from_real_aws, plain_console
from support_pricing import recorded_calls, stubbed_pricing_client
from typer.testing import CliRunner

import cli
from automation import cost_prices, cost_report, operations
from automation.operations import CloudEnv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # No Pulumi CLI anywhere on PATH: `cost` must not need it.
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    isolate_from_real_aws(monkeypatch, tmp_path)
    monkeypatch.setattr(operations, "cloud_env", lambda: CloudEnv(project_dir=ROOT, console=plain_console()))
    runner = CliRunner()
    return lambda *args: runner.invoke(cli.app, ["cost", *args])


def document(output: str) -> dict[str, Any]:
    (line,) = [line for line in output.splitlines() if line.startswith("{")]
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_prod_json_shows_the_per_million_figure_of_each_archive_mode(run: Any) -> None:
    result = run("--stack", "prod", "--json")
    assert result.exit_code == 0, result.output
    report = document(result.stdout)
    by_mode = report["per_million_usd_by_archive_mode"]
    assert list(by_mode) == ["direct", "batched", "basic-ingest"]
    assert by_mode["direct"] > by_mode["batched"] > by_mode["basic-ingest"] > 0
    estimate = report["estimate"]
    assert (estimate["stack"], estimate["region"], estimate["archive_mode"]) == (
        "prod",
        "eu-west-1",
        "batched",
    )
    assert estimate["simulators"] == 4 and estimate["storage_steady_from_month"] == 25
    items = {f"{line['service']}: {line['item']}" for line in estimate["line_items"]}
    assert {
        "Amazon VPC: NAT gateway hours",
        "Amazon Data Firehose: ingestion",
        "CloudWatch: Container Insights metrics",
    } <= items
    assert report["prices"]["pinned_on"] and report["prices"]["sources"]["nat_hours"].startswith("https://")
    assert report["not_counted"] and report["assumptions"]
    assert report["traffic"]["telemetry_per_s"] == 10.0


def test_dev_prints_a_table_with_totals_and_the_mode_comparison(run: Any) -> None:
    result = run("--stack", "dev")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Stack 'dev' (eu-west-1): 2 simulators, archive direct" in out
    assert "AWS IoT Core: messaging" in out and "total" in out
    assert "Per million messages: $" in out and "direct (configured)" in out
    assert "never checked against a bill" in out


def test_simulators_override_and_its_bounds(run: Any) -> None:
    default = document(run("--stack", "dev", "--json").stdout)["estimate"]
    more = document(run("--stack", "dev", "--simulators", "10", "--json").stdout)["estimate"]
    assert more["simulators"] == 10 and more["total_usd"] > default["total_usd"]
    refused = run("--stack", "dev", "--simulators", "101")
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: --simulators 101: ") and refused.stderr.count("\n") == 1


def test_the_local_stack_costs_nothing(run: Any) -> None:
    result = run("--stack", "local")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: `cost` estimates AWS charges; the local stack costs nothing — try --stack dev\n"
    )


def test_refresh_prices_without_credentials_says_where_they_come_from(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    result = run("--stack", "dev", "--refresh-prices")
    assert result.exit_code == 2
    assert "no AWS credentials found; --refresh-prices needs them" in result.stderr
    assert "aws sso login" in result.stderr and result.stderr.count("\n") == 1


def test_refresh_prices_rewrites_the_table_then_estimates_with_it(
    run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prices = tmp_path / "prices"
    shutil.copytree(cost_prices.PRICE_DIR, prices)
    monkeypatch.setattr(cost_prices, "PRICE_DIR", prices)
    client, stubber = stubbed_pricing_client(recorded_calls())
    monkeypatch.setattr(cost_report, "pricing_client", lambda: client)
    result = run("--stack", "prod", "--json")
    before = document(result.stdout)["estimate"]["total_usd"]

    result = run("--stack", "prod", "--json", "--refresh-prices")
    assert result.exit_code == 0, result.output
    stubber.assert_no_pending_responses()
    report = document(result.stdout)
    assert report["refresh"].startswith(
        f"{len(cost_prices.PriceKey) - 1} of {len(cost_prices.PriceKey)} figures"
    )
    assert "kept pinned: cloud_map_instances" in report["refresh"]
    assert report["prices"]["sources"]["nat_hours"].startswith("AWS Price List API, AmazonEC2 SKU")
    # prod runs two NAT gateways all month: $0.052 instead of $0.048 an hour each.
    assert report["estimate"]["total_usd"] == pytest.approx(before + 2 * 730 * 0.004)
    assert cost_prices.load_price_table("eu-west-1", prices).figure(cost_prices.PriceKey.NAT_HOURS).tiers[
        0
    ].usd == (pytest.approx(0.052))
