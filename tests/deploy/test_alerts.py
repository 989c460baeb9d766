"""Every alert rule in deploy/ refers only to metrics that something we run exports.

An alert on a series nobody exports never fires, and nothing says so: Prometheus evaluates it to
an empty vector forever. The names each PromQL expression uses are checked against
- the façade's own registry (a real FacadeMetrics, its families with the sample suffixes
  prometheus_client gives each type);
- Triton's names as a real CPU Triton exports them (tests/data/metrics/triton_cpu.txt, captured
  from its /metrics and re-checked against a live scrape by
  tests/integration/test_alert_metrics.py);
- names that only exist on GPU hosts, copied from their exporters' docs with the source
  (tests/data/metrics/gpu_only.txt);
- the series Prometheus writes itself for each target (`up`, …: tests/data/metrics/prometheus.txt).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from autoglm.server.telemetry.metrics import FacadeMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DATA = ROOT / "tests" / "data" / "metrics"

# Sample names prometheus_client writes for each family type (the exposition format's suffixes;
# `_created` is the client's creation timestamp).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}
# PromQL words that look like identifiers but are no metric (prometheus.io/docs/prometheus/
# latest/querying/operators/ and basics/).
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "start", "end", "inf", "nan"}
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\w)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not function calls,
    keywords, label names (in `{}` or in by/without/on/ignoring lists) or in strings/ranges."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def exposition_names(text: str) -> set[str]:
    """The sample names in a Prometheus text exposition, as written (Prometheus stores those)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            if match:
                names.add(match.group(0))
    return names


def _listed(name: str) -> frozenset[str]:
    lines = (DATA / name).read_text().splitlines()
    return frozenset(s for line in lines if (s := line.strip()) and not s.startswith("#"))


def facade_names() -> frozenset[str]:
    names = set()
    for family in FacadeMetrics(["m"]).registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return frozenset(names)


TRITON_CPU = _listed("triton_cpu.txt")
GPU_ONLY = _listed("gpu_only.txt")
PROMETHEUS = _listed("prometheus.txt")


def exported() -> frozenset[str]:
    return facade_names() | TRITON_CPU | GPU_ONLY | PROMETHEUS


@dataclass(frozen=True)
class Rule:
    source: str
    alert: str
    expr: str


def _rule_groups(doc: object) -> list[dict[str, object]]:
    """Prometheus rule files have `groups`; the operator's PrometheusRule has them in `spec`."""
    if not isinstance(doc, dict):
        return []
    if doc.get("kind") == "PrometheusRule":
        return list((doc.get("spec") or {}).get("groups") or [])
    groups = doc.get("groups")
    return list(groups) if isinstance(groups, list) else []


def alert_rules() -> Iterator[Rule]:
    """Every alerting rule in a YAML file under deploy/ (rule files and PrometheusRules)."""
    for path in sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            for group in _rule_groups(doc):
                for rule in group.get("rules") or []:  # type: ignore[attr-defined]
                    if "alert" in rule:
                        yield Rule(str(path.relative_to(ROOT)), rule["alert"], str(rule["expr"]))


RULES = list(alert_rules())


def test_the_rules_are_found() -> None:
    sources = {rule.source for rule in RULES}
    assert "deploy/observability/alerts.yml" in sources
    assert len(RULES) >= 10


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.alert)
def test_every_alert_uses_only_exported_metrics(rule: Rule) -> None:
    names = metric_names(rule.expr)
    assert names, f"{rule.alert}: no metric found in {rule.expr!r}"
    unknown = names - exported()
    assert not unknown, f"{rule.source} {rule.alert}: nothing exports {sorted(unknown)}"


def test_a_made_up_metric_is_caught() -> None:
    expr = 'sum by (model) (rate(autoglm_made_up_total{code="OK"}[5m])) / on(model) up > 1'
    assert metric_names(expr) == {"autoglm_made_up_total", "up"}
    assert metric_names(expr) - exported() == {"autoglm_made_up_total"}
    # The deleted queue gauge, which nothing ever set, is no longer exported either.
    assert "autoglm_queued_requests" not in exported()


def test_the_tokenizer_skips_functions_labels_and_keywords() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (model, le) "
        '(rate(autoglm_time_to_first_token_seconds_bucket{rpc=~"Generate|x"}[5m]))) > 2 '
        "and ignoring(le) clamp_min(nv_inference_request_success offset 1h, 1e-9) unless bool 1"
    )
    assert metric_names(expr) == {
        "autoglm_time_to_first_token_seconds_bucket",
        "nv_inference_request_success",
    }


def test_the_facade_names_follow_its_registry() -> None:
    names = facade_names()
    assert {"autoglm_requests_total", "autoglm_engine_up"} <= names
    assert "autoglm_request_duration_seconds_bucket" in names
    assert "autoglm_requests" not in names  # a counter is only exposed with `_total`


def test_gpu_utilisation_alerts_use_each_source_in_its_unit() -> None:
    by_name = {rule.alert: rule.expr for rule in RULES}
    # Triton: a 0.0-1.0 ratio; dcgm-exporter: percent (the sources in gpu_only.txt).
    assert re.search(r"nv_gpu_utilization\)\s*>\s*0\.9\b", by_name["TritonGpuUtilizationHigh"])
    assert re.search(r"DCGM_FI_DEV_GPU_UTIL\)\s*>\s*90\b", by_name["DcgmGpuUtilizationHigh"])
