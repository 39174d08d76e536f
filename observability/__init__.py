"""Prometheus config, alert rules and Grafana dashboards, generated from the metric catalog."""
