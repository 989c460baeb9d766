"""deploy/observability/: files parse, and every `autoglm_*` series they query exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm.server.telemetry.metrics import FacadeMetrics

DIR = Path(__file__).resolve().parents[3] / "deploy" / "observability"
YAML_FILES = [
    "prometheus.yml",
    "alerts.yml",
    "otel-collector.yaml",
    "docker-compose.yml",
    "tempo.yaml",
    "grafana/provisioning/datasources/datasources.yml",
    "grafana/provisioning/dashboards/dashboards.yml",
]
SERIES = re.compile(r"\b((?:autoglm|nv)_[a-z0-9_]+)")
# Triton metrics the brief and facts.md name; the dashboard must show them.
REQUIRED_TRITON = {
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_pending_request_count",
}


def load_yaml(name: str) -> Any:
    return yaml.safe_load((DIR / name).read_text())


def facade_series() -> set[str]:
    """Every series name FacadeMetrics can expose (families plus their type's suffixes)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in FacadeMetrics(["m"]).registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def alert_exprs() -> list[str]:
    return [r["expr"] for g in load_yaml("alerts.yml")["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads((DIR / "grafana-dashboard.json").read_text())


def dashboard_exprs() -> list[str]:
    out = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in dashboard()["templating"]["list"]]
    return out


@pytest.mark.parametrize("name", YAML_FILES)
def test_yaml_parses(name: str) -> None:
    assert isinstance(load_yaml(name), dict)


def test_every_autoglm_series_exists() -> None:
    known = facade_series()
    used = {m for e in alert_exprs() + dashboard_exprs() for m in SERIES.findall(e)}
    facade_used = {m for m in used if m.startswith("autoglm_")}
    assert facade_used, "configs reference no façade metric"
    assert facade_used <= known, sorted(facade_used - known)


def test_dashboard_covers_both_sides() -> None:
    d = dashboard()
    assert d["uid"] and d["panels"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    used = {m for e in dashboard_exprs() for m in SERIES.findall(e)}
    assert used >= REQUIRED_TRITON
    assert any(m.startswith("nv_trt_llm_") for m in used)
    for needed in (
        "autoglm_requests_total",
        "autoglm_time_to_first_token_seconds_bucket",
        "autoglm_inter_token_latency_seconds_bucket",
        "autoglm_request_duration_seconds_bucket",
        "autoglm_in_flight_requests",
    ):
        assert needed in used


def test_alerts_are_well_formed() -> None:
    exprs = " ".join(alert_exprs())
    assert "nv_inference_pending_request_count" in exprs
    for group in load_yaml("alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_prometheus_scrapes_facade_and_triton() -> None:
    cfg = load_yaml("prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = [t for t in jobs["triton"]["static_configs"][0]["targets"]]
    assert any(t.endswith(":8002") for t in targets)
    assert "autoglm-facade" in jobs
    assert any(r.endswith("alerts.yml") for r in cfg["rule_files"])


def test_compose_mounts_existing_files() -> None:
    compose = load_yaml("docker-compose.yml")
    assert {"otel-collector", "tempo", "jaeger", "prometheus", "grafana"} <= set(
        compose["services"]
    )
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (DIR / src).exists(), vol
    collector = load_yaml("otel-collector.yaml")
    assert collector["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
