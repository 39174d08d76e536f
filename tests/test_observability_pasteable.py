"""Prometheus without Grafana: every panel's query pasteable as is, and links that open it.

A real Prometheus (Debian's 2.42) evaluates every substituted query, and serves the links.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_stack import prometheus
from local_stack.ports import free_port
from observability.pasteable import MAIN_PANELS, graph_url, main_panel_links, panel_queries
from observability.reference_doc import render

QUERIES = list(panel_queries(None))


def test_every_panel_query_has_its_variables_replaced() -> None:
    assert len(QUERIES) > 40
    for query in QUERIES:
        assert "$" not in query.expr, (query.panel, query.expr)
    by_panel = {query.panel: query for query in QUERIES}
    assert 'site=~".*"' in by_panel["Machines by state"].expr
    # A machine query names a machine of a type that has the signal: cycle time is a mill's.
    assert 'machine="site-00-line-01-cnc_mill-01"' in by_panel["Cycle time (s)"].expr
    assert "[1h]" in by_panel["OEE (time range)"].expr and by_panel["OEE (time range)"].instant


def test_links_carry_the_query_and_open_the_graph_or_table_tab() -> None:
    url = graph_url("http://127.0.0.1:9490/", ['sum(rate(x{a="b c"}[1m]))', "up"], instant=True)
    parsed = urllib.parse.urlsplit(url)
    assert (parsed.netloc, parsed.path) == ("127.0.0.1:9490", "/graph")
    parameters = urllib.parse.parse_qs(parsed.query)
    assert parameters["g0.expr"] == ['sum(rate(x{a="b c"}[1m]))'] and parameters["g1.expr"] == ["up"]
    assert parameters["g0.tab"] == ["1"] and parameters["g0.range_input"] == ["1h"]


def test_the_reference_doc_shows_each_query_pasteable_with_a_link() -> None:
    text = render()
    pasteable = [line for line in text.splitlines() if line.strip().startswith("- in Prometheus:")]
    assert len(pasteable) >= len(QUERIES) - 20  # the cloud-only dashboard's queries are listed too
    assert all("$" not in line.split("`")[1] for line in pasteable)
    assert sum("open in Prometheus](http://127.0.0.1:9490/graph?g0.expr=" in line for line in pasteable) > 40


@pytest.fixture(scope="module")
def prometheus_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder: Path = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    port = free_port()
    process = prometheus.process(config, folder / "data", port, "1h", folder / "prometheus.log")
    process.start()
    try:
        assert prometheus.wait_ready(port, 30.0), (folder / "prometheus.log").read_text()
        yield port
    finally:
        process.stop()


def test_every_pasteable_query_is_valid_promql_in_a_real_prometheus(prometheus_port: int) -> None:
    failures = []
    for query in QUERIES:
        try:
            prometheus.query(prometheus_port, query.expr)
        except Exception as error:
            failures.append(f"{query.dashboard_uid} / {query.panel}: {error}")
    assert not failures, "\n".join(failures)


def test_main_panel_links_open_in_prometheus_with_their_queries(prometheus_port: int) -> None:
    links = main_panel_links(prometheus.url(prometheus_port))
    assert [title for title, _ in links] == [title for _, title in MAIN_PANELS]
    for title, url in links:
        with urllib.request.urlopen(url, timeout=5.0) as response:  # follows Debian's redirect
            assert response.status == 200, title
            landed = urllib.parse.urlsplit(response.url)
            page = response.read().decode()
        assert "Prometheus" in page
        # The page Prometheus lands on still carries the panel's queries.
        expressions = urllib.parse.parse_qs(landed.query)["g0.expr"]
        assert expressions == urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["g0.expr"]
