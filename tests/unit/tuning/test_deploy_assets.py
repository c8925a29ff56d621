"""Every series the Grafana dashboard, the alert rules and the advisor read exists in the
server's /metrics (a PrometheusMetrics exposition, as GET /metrics renders it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from pagellm.metrics.prometheus import PrometheusMetrics
from pagellm.tuning.checklist import DEPLOY_DIR, MONITORING_FILES
from pagellm.tuning.metrics_window import METRICS_READ

SERIES = re.compile(r"\b(vllm:[a-z_:]+|http_requests_total)\b")
ALERTS = {"PagellmHighTTFT", "PagellmKVCacheNearFull", "PagellmFrequentPreemption",
          "PagellmHighErrorRate", "PagellmQueueGrowing"}


def _exported_series() -> set[str]:
    metrics = PrometheusMetrics("m")
    metrics.observe_http("POST", "/v1/completions", 200, 0.1)
    metrics.request_success.labels(model_name="m", engine="0", finished_reason="stop").inc()
    text = metrics.render().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY_DIR / "grafana/pagellm-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"]]
    return exprs


def _alert_rules() -> list[dict]:
    rules = yaml.safe_load((DEPLOY_DIR / "prometheus/alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_assets_exist_where_check_looks():
    for name in MONITORING_FILES:
        assert (DEPLOY_DIR / name).is_file(), name
    assert Path(DEPLOY_DIR).name == "deploy"


def test_every_referenced_series_is_exported():
    exported = _exported_series()
    referenced = set()
    for expr in _dashboard_exprs() + [rule["expr"] for rule in _alert_rules()]:
        referenced |= set(SERIES.findall(expr))
    referenced |= set(METRICS_READ)
    missing = referenced - exported
    assert not missing, sorted(missing)
    assert len(referenced) >= 12


def test_the_guides_alerts_are_all_there_with_sources():
    rules = _alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["annotations"]["source"].startswith("00"), rule["alert"]
        assert rule["for"] and rule["labels"]["severity"] in ("warning", "critical")
