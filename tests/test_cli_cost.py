"""`python cli.py cost`: the estimate from the stack files in the repository, without Pulumi or AWS;
and the change in monthly cost `up` and `scale` report before they apply."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import test_cli_cloud
from support_cloud import isolate_from_real_aws, use_plain_terminal
from support_pricing import recorded_calls, stubbed_pricing_client
from test_cli_cloud import BASE_CONFIG, Cloud, json_lines
from typer.testing import CliRunner

import cli
from automation import cost_prices, cost_report, stack_context
from automation.stack_context import CloudEnv
from automation.stack_port import OutputValue
from infra.settings import SETTINGS_OUTPUT, load_settings

ROOT = Path(__file__).resolve().parent.parent
cloud = test_cli_cloud.cloud  # the recording stand-in for a cloud stack (tests/test_cli_cloud.py)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # No Pulumi CLI anywhere on PATH: `cost` must not need it.
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    isolate_from_real_aws(monkeypatch, tmp_path)
    monkeypatch.setattr(stack_context, "cloud_env", lambda: CloudEnv(project_dir=ROOT))
    use_plain_terminal(monkeypatch)
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
    assert report["event"] == "result" and report["stack"] == "prod"
    by_mode = report["per_million_by_archive_mode_usd"]
    assert list(by_mode) == ["direct", "batched", "basic-ingest"]
    assert by_mode["direct"] > by_mode["batched"] > by_mode["basic-ingest"] > 0
    # The figures are the variable part: ~$6.49, ~$1.48 and ~$0.48 per million for prod's fleet.
    variable = report["variable_per_million_by_archive_mode_usd"]
    assert [round(variable[mode], 1) for mode in ("direct", "batched", "basic-ingest")] == [6.5, 1.5, 0.5]
    assert variable["batched"] - variable["basic-ingest"] == pytest.approx(1.00, abs=0.005)  # IoT messaging
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
        "AWS WAF: web ACL",
        "Amazon EFS: Standard storage",
        "AWS KMS: customer managed keys",
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


# --- the change in monthly cost before `up` and `scale` apply ----------------------------------------


def deployed(cloud: Cloud, config: dict[str, Any]) -> None:
    """The stack's last update ran with `config`: the program exported those settings."""
    values = {
        key: json.dumps(value) if isinstance(value, dict | list) else str(value)
        for key, value in config.items()
    }
    settings = load_settings("dev", values).model_dump(mode="json", by_alias=True)
    cloud.stack.set_output(SETTINGS_OUTPUT, OutputValue(settings))


def test_scale_prints_the_change_in_monthly_cost_before_the_update(cloud: Cloud) -> None:
    deployed(cloud, BASE_CONFIG)
    result = cloud.run("scale", "--stack", "dev", "--simulators", "6", "--json")
    assert result.exit_code == 0, result.output
    records = json_lines(result.output)
    kinds = [record["event"] for record in records]
    assert kinds.index("cost-change") < kinds.index("resource-start")
    change = records[kinds.index("cost-change")]["change"]
    assert (change["simulators_before"], change["simulators_after"]) == (2, 6)
    assert change["after_usd"] > change["before_usd"] > 0
    assert change["delta_usd"] == pytest.approx(change["after_usd"] - change["before_usd"])
    assert records[-1]["cost_change"] == change
    # The settings output is the CLI's; people see the usual outputs.
    assert "stack_settings" not in records[-1]["outputs"]


def test_up_prints_the_change_from_what_the_last_update_ran_with(cloud: Cloud) -> None:
    deployed(cloud, {**BASE_CONFIG, "iotfactory:archiveMode": "batched"})
    result = cloud.run("up", "--stack", "dev")  # the file says direct: one S3 object per message
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("monthly estimate $"))
    assert "(+$" in line and "cost --stack dev" in line
    assert result.output.index("monthly estimate") < result.output.index("up of 'dev' done")


def test_a_first_up_starts_from_nothing_and_a_settings_output_from_an_older_program_is_ignored(
    cloud: Cloud,
) -> None:
    result = cloud.run("up", "--stack", "dev", "--json")
    change = next(r for r in json_lines(result.output) if r["event"] == "cost-change")["change"]
    assert change["before_usd"] is None and change["delta_usd"] == change["after_usd"] > 0
    cloud.stack.set_output(SETTINGS_OUTPUT, OutputValue({"unknownKey": 1}))
    result = cloud.run("up", "--stack", "dev", "--json")
    assert result.exit_code == 0, result.output
    assert (
        next(r for r in json_lines(result.output) if r["event"] == "cost-change")["change"]["before_usd"]
        is None
    )


def test_a_region_without_prices_updates_without_a_cost_line(cloud: Cloud) -> None:
    cloud.write_stack_file({**BASE_CONFIG, "aws:region": "ap-southeast-2"})
    result = cloud.run("up", "--stack", "dev", "--json")
    assert result.exit_code == 0, result.output
    assert "cost-change" not in [record["event"] for record in json_lines(result.output)]
    assert json_lines(result.output)[-1]["cost_change"] is None
