"""FacadeMetrics: simulated requests, then a scrape of the real /metrics endpoint on port 0."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoglm.server.telemetry.metrics import UNKNOWN_MODEL, FacadeMetrics, MetricsServer

MODEL = "smollm2"


@pytest.fixture
def served() -> Iterator[tuple[FacadeMetrics, MetricsServer, int]]:
    metrics = FacadeMetrics([MODEL])
    server, port = metrics.start_http_server("127.0.0.1", 0)
    try:
        yield metrics, server, port
    finally:
        server.stop()


def scrape(port: int) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """{family name: [(sample name, labels, value)]} from the live endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        f.name: [(s.name, dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def value(families, family: str, sample: str, **labels: str) -> float:
    for name, lab, v in families[family]:
        if name == sample and all(lab.get(k) == x for k, x in labels.items()):
            return v
    raise KeyError(f"{sample} {labels} not in {family}")


def sample(families, family: str, suffix: str, **labels: str) -> float:
    return value(families, family, family + suffix, **labels)


def simulate_stream(metrics: FacadeMetrics, chunks: list[int], prompt: int) -> None:
    obs = metrics.request(MODEL, "GenerateStream")
    time.sleep(0.01)  # the engine's prefill
    for n in chunks:
        obs.tokens(n)
        time.sleep(0.002)
    obs.finish(grpc.StatusCode.OK, prompt_tokens=prompt, completion_tokens=sum(chunks))


def test_scrape_after_simulated_requests(served) -> None:
    metrics, _, port = served
    simulate_stream(metrics, [1, 1, 1, 2], prompt=12)  # 5 tokens: 1 TTFT + 4 gaps
    simulate_stream(metrics, [1, 1, 1], prompt=30)  # 3 tokens: 1 TTFT + 2 gaps
    failed = metrics.request(MODEL, "Generate")
    failed.finish(grpc.StatusCode.INVALID_ARGUMENT)
    failed.finish(grpc.StatusCode.INTERNAL)  # a second finish (e.g. in `finally`) is ignored
    metrics.request("no-such-model", "Generate").finish("NOT_FOUND")
    metrics.auth_failure("invalid_token")
    metrics.limit_rejection("concurrency")
    metrics.set_engine_up(True)
    in_flight = metrics.request(MODEL, "Generate")  # still running at scrape time

    f = scrape(port)

    def requests(code: str, rpc: str, model: str = MODEL) -> float:
        return value(
            f, "autoglm_requests", "autoglm_requests_total", model=model, rpc=rpc, code=code
        )

    assert requests("OK", "GenerateStream") == 2
    assert requests("INVALID_ARGUMENT", "Generate") == 1
    assert requests("NOT_FOUND", "Generate", UNKNOWN_MODEL) == 1
    assert not any(lab.get("code") == "INTERNAL" for _, lab, _ in f["autoglm_requests"])
    assert not any(lab.get("model") == "no-such-model" for s in f.values() for _, lab, _ in s)

    ttft = "autoglm_time_to_first_token_seconds"
    assert sample(f, ttft, "_count", model=MODEL) == 2
    itl = "autoglm_inter_token_latency_seconds"
    assert sample(f, itl, "_count", model=MODEL) == (5 - 1) + (3 - 1)
    dur = "autoglm_request_duration_seconds"
    dur_sum = sample(f, dur, "_sum", model=MODEL, rpc="GenerateStream")
    assert 0 < sample(f, ttft, "_sum", model=MODEL) < dur_sum
    # Histograms are non-empty: the +Inf bucket holds every observation.
    assert sample(f, ttft, "_bucket", model=MODEL, le="+Inf") == 2
    assert value(f, "autoglm_prompt_tokens", "autoglm_prompt_tokens_sum", model=MODEL) == 42
    assert value(f, "autoglm_prompt_tokens", "autoglm_prompt_tokens_count", model=MODEL) == 2
    assert value(f, "autoglm_completion_tokens", "autoglm_completion_tokens_sum", model=MODEL) == 8
    assert value(f, "autoglm_generated_tokens", "autoglm_generated_tokens_total", model=MODEL) == 8
    assert value(f, "autoglm_in_flight_requests", "autoglm_in_flight_requests", model=MODEL) == 1
    assert sample(f, "autoglm_auth_failures", "_total", reason="invalid_token") == 1
    assert sample(f, "autoglm_limit_rejections", "_total", limit="concurrency") == 1
    assert value(f, "autoglm_engine_up", "autoglm_engine_up") == 1

    in_flight.finish("CANCELLED")
    f = scrape(port)
    assert value(f, "autoglm_in_flight_requests", "autoglm_in_flight_requests", model=MODEL) == 0


def test_first_token_then_tokens_counts_one_ttft() -> None:
    metrics = FacadeMetrics([MODEL], process_metrics=False)
    obs = metrics.request(MODEL, "Generate")
    obs.first_token()
    obs.first_token()
    obs.tokens(1)  # the first token already marked: this is a gap
    obs.finish("OK", 3, 1)
    assert obs.ttft_s is not None and obs.ttft_s >= 0
    count = metrics.registry.get_sample_value(
        "autoglm_time_to_first_token_seconds_count", {"model": MODEL}
    )
    assert count == 1
    gaps = metrics.registry.get_sample_value(
        "autoglm_inter_token_latency_seconds_count", {"model": MODEL}
    )
    assert gaps == 1


def test_registries_are_independent_and_server_stops() -> None:
    a, b = FacadeMetrics([MODEL]), FacadeMetrics([MODEL])
    a.request(MODEL, "Generate").finish("OK")
    labels = {"model": MODEL, "api": "grpc", "rpc": "Generate", "code": "OK"}
    assert a.registry.get_sample_value("autoglm_requests_total", labels) == 1
    assert b.registry.get_sample_value("autoglm_requests_total", labels) is None
    server, port = b.start_http_server("127.0.0.1", 0)
    assert port > 0
    server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
