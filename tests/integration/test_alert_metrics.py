"""The captured list of Triton's metric names (tests/data/metrics/triton_cpu.txt), which the alert
rules are checked against offline (tests/deploy/test_alerts.py), is what a real Triton exports."""

from __future__ import annotations

import urllib.request

from autoglm.server.devstack.triton_process import TritonProcess
from tests.deploy.test_alerts import TRITON_CPU, alert_rules, exposition_names, metric_names


def live_names(triton: TritonProcess) -> set[str]:
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as resp:
        return exposition_names(resp.read().decode())


def test_the_captured_triton_names_are_exported(triton: TritonProcess) -> None:
    live = live_names(triton)
    assert live >= TRITON_CPU, f"not exported: {sorted(TRITON_CPU - live)}; live: {sorted(live)}"


def test_every_triton_name_the_alerts_use_on_cpu_is_exported(triton: TritonProcess) -> None:
    live = live_names(triton)
    used = {name for rule in alert_rules() for name in metric_names(rule.expr)}
    assert {n for n in used if n in TRITON_CPU} <= live
