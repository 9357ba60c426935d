"""Every ubs_embed_* name and label the dashboard and the alert rules use exists in the real /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "ubs-embed.json"
RULES = sorted((REPO_ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
# Sample names of each metric type, from the family name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
SELECTOR = re.compile(r"\b(ubs_embed_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def expressions() -> list[tuple[str, str]]:
    found = []
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        found += [(f"dashboard panel {panel['title']!r}", t["expr"]) for t in panel["targets"]]
    found += [(f"dashboard variable {v['name']!r}", v["definition"]) for v in dashboard["templating"]["list"]]
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [(f"{Path(path).name} {rule['alert']}", rule["expr"]) for rule in group["rules"]]
    return found


def exposed(metrics_text: str) -> dict[str, set[str]]:
    """Sample name -> label names (without `le`), for every family the service declares."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = labels
    return names


def test_dashboard_and_alerts_use_only_exposed_metrics(service_metrics: str) -> None:
    names = exposed(service_metrics)
    assert "ubs_embed_requests_total" in names and "ubs_embed_request_duration_seconds_bucket" in names
    used = 0
    for where, expr in expressions():
        for name, selector in SELECTOR.findall(expr):
            used += 1
            assert name in names, f"{where}: {name} is not in the service's /metrics"
            for label, _, _ in MATCHER.findall(selector or ""):
                assert label in names[name] | TARGET_LABELS, f"{where}: {name} has no label {label!r}"
    assert used >= 20


def test_label_values_the_queries_match_exist(service_metrics: str) -> None:
    """route="/embed" and the provider label values are what the service really writes."""
    samples = [s for f in text_string_to_metric_families(service_metrics) for s in f.samples]
    routes = {s.labels["route"] for s in samples if s.name == "ubs_embed_requests_total"}
    assert "/embed" in routes
    statuses = {s.labels["status"] for s in samples if s.name == "ubs_embed_requests_total"}
    assert {"200", "422"} <= statuses, "status is the numeric HTTP code the rules' 5.. regex expects"
    (info,) = [s for s in samples if s.name == "ubs_embed_model_info"]
    assert info.value == 1.0
    assert info.labels["provider"].endswith("ExecutionProvider")
    assert info.labels["requested_provider"] in {"auto", "cpu", "cuda"}
    reasons = {s.labels["reason"] for s in samples if s.name == "ubs_embed_failures_total"}
    assert reasons, "the refused request was counted by reason"
