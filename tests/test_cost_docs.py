"""The cost figures docs/infra.md and docs/cloud.md quote are what `python cli.py cost` prints now.

Each figure is recomputed from the repository's stack files, the pinned price tables
(`automation/prices/`) and the traffic the simulator model measures, then looked up in the doc's
text (whitespace collapsed, so a figure wrapped across lines still counts). A change to the model,
the payload contract, the stack files or the prices that moves a quoted figure fails here until the
doc is updated. No network, no Pulumi.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from automation.cost_model import compare_archive_modes, cost_change, estimate, with_simulators
from automation.cost_prices import PriceTable, load_price_table
from automation.cost_traffic import measure_traffic
from factory_core.stack_file import program_view, read_config
from factory_core.verb_results import ArchiveModeCost, CostEstimate
from infra.settings import StackSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent
MODES = ("direct", "batched", "basic-ingest")


def doc_text(name: str) -> str:
    return re.sub(r"\s+", " ", (ROOT / "docs" / name).read_text())


@functools.cache
def stack_settings(stack: str) -> StackSettings:
    """What `cost --stack <stack>` prices: the stack file, read as the program reads it."""
    return load_settings(stack, program_view(read_config(ROOT / f"Pulumi.{stack}.yaml")))


@functools.cache
def prices(region: str) -> PriceTable:
    return load_price_table(region)


def configured(stack: str) -> CostEstimate:
    settings = stack_settings(stack)
    return estimate(settings, prices(settings.region), measure_traffic(settings.fleet))


def modes(stack: str, region: str | None = None, simulators: int | None = None) -> dict[str, ArchiveModeCost]:
    settings = stack_settings(stack)
    table = prices(region or settings.region)
    rows = compare_archive_modes(settings, table, measure_traffic(settings.fleet), simulators=simulators)
    return {row.archive_mode: row for row in rows}


def variable(row: ArchiveModeCost) -> float:
    assert row.variable_usd_per_million is not None
    return row.variable_usd_per_million


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_headline_row_of_each_stack(stack: str) -> None:
    result = configured(stack)
    assert result.usd_per_million is not None and result.variable_usd_per_million is not None
    row = (
        f"| {result.messages_per_month / 1e6:.1f} M | {result.total_usd:.2f} | "
        f"{result.usd_per_million:.2f} | {result.variable_usd_per_million:.2f} |"
    )
    assert row in doc_text("infra.md")


def test_variable_cost_per_million_by_archive_mode() -> None:
    us_dev, eu_dev, eu_prod = modes("dev", "us-east-1"), modes("dev"), modes("prod")
    text = doc_text("infra.md")
    for mode in MODES:
        figures = " | ".join(f"{variable(column[mode]):.2f}" for column in (us_dev, eu_dev, eu_prod))
        # The row's label may say more: "| `batched` (Firehose) | 1.44 | ..."
        assert re.search(rf"\| `{mode}`[^|`]* \| {re.escape(figures)} \|", text), (mode, figures)


def test_prods_fleet_in_each_archive_mode() -> None:
    rows = modes("prod")
    text = doc_text("infra.md")
    totals = ", ".join(f"`{mode}` ${rows[mode].total_usd:,.2f}" for mode in MODES)
    assert f"In monthly totals for prod's fleet: {totals};" in text
    per_million = ", ".join(f"${rows[mode].usd_per_million:.2f}" for mode in MODES).rsplit(", ", 1)
    assert f"{' and '.join(per_million)} for prod's fleet" in text
    issue = ", ".join(f"${variable(rows[mode]):.2f}" for mode in MODES).rsplit(", ", 1)
    assert f"(the issue's figures: {' and '.join(issue)})" in text
    cli_figures = ", ".join(f"{variable(rows[mode]):.2f}" for mode in MODES).rsplit(", ", 1)
    assert f"gives about {' and '.join(cli_figures)}" in doc_text("cloud.md")


def test_prods_fleet_at_10_50_and_100_simulators() -> None:
    text = doc_text("infra.md")
    for mode in MODES:
        totals = [f"${modes('prod', simulators=n)[mode].total_usd:,.0f}" for n in (10, 50, 100)]
        verb = " is" if mode == "batched" else ""  # "`batched` is $721, ..., `basic-ingest` $458, ..."
        assert f"`{mode}`{verb} {totals[0]}, {totals[1]} and {totals[2]}" in text


def test_the_scale_example_in_cloud_md() -> None:
    prod = stack_settings("prod")
    change = cost_change(prod, with_simulators(prod, 8))
    assert change.before_usd is not None
    line = f"monthly estimate ${change.before_usd:.2f} -> ${change.after_usd:.2f} (+${change.delta_usd:.2f};"
    assert line in doc_text("cloud.md")
