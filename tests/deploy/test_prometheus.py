"""Prometheus config and alert rules: promtool, and a real Prometheus scraping a real service."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import REPO_ROOT, find_tool, post_embeds, run

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "ubs-embed.json"
HINT = "apt-get install prometheus"
ALERTS = {
    "UbsEmbedDown",
    "UbsEmbedHighErrorRatio",
    "UbsEmbedHighP99Latency",
    "UbsEmbedQueueSaturated",
    "UbsEmbedCacheErrors",
    "UbsEmbedGpuRequestedButOnCpu",
}


def test_promtool_check_config_loads_the_rules() -> None:
    promtool = find_tool("promtool", HINT)
    result = run([promtool, "check", "config", str(CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    # The relative rule_files glob resolves to the rules folder next to the config.
    assert f"SUCCESS: {len(RULES)} rule files found" in result.stdout + result.stderr
    assert RULES


def test_promtool_check_rules() -> None:
    promtool = find_tool("promtool", HINT)
    result = run([promtool, "check", "rules", *map(str, RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    names = {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }
    assert names == ALERTS


def test_alert_rules_fire_on_the_series_they_are_for() -> None:
    """promtool's rule unit tests: every alert fires on a bad series and stays quiet on a healthy one."""
    promtool = find_tool("promtool", HINT)
    result = run([promtool, "test", "rules", str(PROMETHEUS_DIR / "tests" / "ubs-embed.test.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- a real Prometheus against a real service -------------------------------------------


def local_config(service_url: str, port: int) -> dict[str, Any]:
    """The deploy config with the API job pointed at the local service instead of Docker's DNS."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(PROMETHEUS_DIR / pattern) for pattern in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["ubs-embed"]
    assert api["dns_sd_configs"][0]["names"] == ["api"] and api["dns_sd_configs"][0]["port"] == 8000
    del api["dns_sd_configs"]
    api["static_configs"] = [{"targets": [service_url.removeprefix("http://")]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    # No Redis exporter here; the in-process cache serves the local service.
    config["scrape_configs"] = [api, jobs["prometheus"]]
    return config


@pytest.fixture(scope="module")
def prometheus(deploy_service: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.app.service_helpers import free_port, wait_until_answering

    binary = find_tool("prometheus", HINT)
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(local_config(deploy_service.url, port)))
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(process, url + "/-/ready", (workdir / "prometheus.log").read_text, 30.0, "Prometheus")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(prometheus + "/api/v1/query", params={"query": promql}, timeout=10.0)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def service_counter(service_url: str) -> float:
    """ubs_embed_requests_total{route="/embed",status="200"} as the service itself reports it."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(service_url + "/metrics", timeout=10.0).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ubs_embed_requests_total" and sample.labels == {"route": "/embed", "status": "200"}:
                return float(sample.value)
    return 0.0


def test_prometheus_scrapes_the_request_counter(
    prometheus: str, deploy_service: Any, ml100k_histories: list[list[dict[str, Any]]]
) -> None:
    from tests.app.service_helpers import wait_until

    post_embeds(deploy_service.url, ml100k_histories, requests=5)
    expected = service_counter(deploy_service.url)
    assert expected >= 5
    promql = 'sum(ubs_embed_requests_total{job="ubs-embed",route="/embed",status="200"})'

    def scraped() -> bool:
        result = query(prometheus, promql)
        return bool(result) and float(result[0]["value"][1]) == expected

    wait_until(scraped, 30.0, f"Prometheus to read {promql} == {expected}")
    (up,) = query(prometheus, 'up{job="ubs-embed"}')
    assert up["value"][1] == "1"


def test_prometheus_evaluates_every_alert_rule(prometheus: str, deploy_service: Any) -> None:
    from tests.app.service_helpers import wait_until

    def evaluated() -> bool:
        groups = httpx.get(prometheus + "/api/v1/rules", timeout=10.0).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return {r["name"] for r in rules} == ALERTS and all(
            r["health"] == "ok" and r.get("lastEvaluation", "").startswith("20") for r in rules
        )

    wait_until(evaluated, 30.0, "every alert rule to be evaluated without error")
    firing = {alert["labels"]["alertname"] for alert in query(prometheus, "ALERTS")}
    # A healthy local service on the provider it asked for pages nobody.
    assert not firing


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_runs_on_prometheus(prometheus: str, deploy_service: Any) -> None:
    """Each panel's PromQL (Grafana's variables filled in as Grafana does) is valid and evaluates."""
    from tests.app.service_helpers import wait_until

    def answered() -> set[str]:
        titles = set()
        for title, expr in dashboard_queries():
            promql = expr.replace("$__rate_interval", "1m").replace('"$instance"', '".*"')
            assert "$" not in promql, f"{title}: unknown Grafana variable in {expr}"
            if query(prometheus, promql):
                titles.add(title)
        return titles

    # Rates need two scrapes of a series, so poll until the core panels have data.
    core = {"Replicas up", "Execution provider", "Request rate by status", "Queue depth", "/embed latency p50 / p99"}
    wait_until(lambda: core <= answered(), 30.0, f"data in the dashboard panels {sorted(core)}")


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load((REPO_ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    refs = [panel["datasource"] for panel in dashboard["panels"]] + [
        t["datasource"] for panel in dashboard["panels"] for t in panel["targets"]
    ]
    assert all(ref == {"type": "prometheus", "uid": source["uid"]} for ref in refs)
    assert source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((REPO_ROOT / "deploy/grafana/provisioning/dashboards/ubs-embed.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    titles = {panel["title"] for panel in dashboard["panels"]}
    wanted = {"Request rate by status", "/embed latency p50 / p99", "Batch size", "Queue depth"}
    assert wanted | {"Cache hit ratio", "Errors by reason", "Execution provider"} <= titles
