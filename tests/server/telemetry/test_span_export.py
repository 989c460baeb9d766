"""The span-export switch: each choice exports real spans over OTLP, and the default everywhere
is the one measured best (docs/observability.md, "Which span processor")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from autoglm.bench.cli import build_parser as bench_parser
from autoglm.server.cli import build_parser
from autoglm.server.models import ModelSpec
from autoglm.server.settings import Settings, SettingsError
from autoglm.server.telemetry import tracing
from autoglm.server.telemetry.span_export import DEFAULT_SPAN_EXPORT, SPAN_EXPORTS
from autoglm.server.telemetry.span_offload import OffloadSpanProcessor
from autoglm.server.telemetry.tracing import TracingSettings
from tests.support.otlp_receiver import OtlpReceiver

# What `autoglm bench` measured best on this project's 2-core machine (docs/observability.md);
# change it only with new figures there.
MEASURED_BEST = "child"
PROCESSOR_OF = {"child": OffloadSpanProcessor, "batch": BatchSpanProcessor}


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    tracing.shutdown_tracing()  # whatever an earlier test left on
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    with OtlpReceiver() as r:
        yield r
        tracing.shutdown_tracing()  # while the receiver still listens


def processors(provider: TracerProvider) -> list[object]:
    return list(provider._active_span_processor._span_processors)  # type: ignore[attr-defined]


@pytest.mark.parametrize("choice", SPAN_EXPORTS)
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_each_choice_exports_the_spans(receiver: OtlpReceiver, choice: str, protocol: str) -> None:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_traces_url
    provider = tracing.setup_tracing(
        TracingSettings(endpoint=endpoint, protocol=protocol, span_export=choice)
    )
    assert provider is not None
    assert [type(p) for p in processors(provider)] == [PROCESSOR_OF[choice]]
    with tracing.generation_span(model="m", request_id="r1"), tracing.engine_span("m_engine"):
        pass
    tracing.shutdown_tracing()  # flushes either processor
    spans = {s.name: s for s in receiver.wait_for(lambda s: len(s) >= 2, timeout=10)}
    assert set(spans) == {"text_completion m", "triton ModelStreamInfer m_engine"}
    assert {s.transport for s in spans.values()} == {protocol}
    engine = spans["triton ModelStreamInfer m_engine"]
    assert engine.parent_span_id == spans["text_completion m"].span_id


def test_batch_honours_the_otel_bsp_variables(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's processor reads OTEL_BSP_* itself: with a 50 ms schedule delay a span arrives
    without any flush, long before the default delay (5 s) would have sent it."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    tracing.setup_tracing(TracingSettings(endpoint=receiver.grpc_endpoint, span_export="batch"))
    with tracing.generation_span(model="m"):
        pass
    assert [s.name for s in receiver.wait_for(lambda s: len(s) >= 1, timeout=3)] == [
        "text_completion m"
    ]


def test_the_default_is_the_measured_one(receiver: OtlpReceiver) -> None:
    assert DEFAULT_SPAN_EXPORT == MEASURED_BEST
    assert TracingSettings().span_export == MEASURED_BEST
    settings = Settings("127.0.0.1:0", "127.0.0.1:8001", (ModelSpec("m", "m", Path("t")),))
    assert settings.span_export == MEASURED_BEST
    parser = build_parser()
    assert parser.parse_args(["serve"]).span_export == MEASURED_BEST
    assert parser.parse_args(["dev"]).span_export == MEASURED_BEST
    assert bench_parser().parse_args([]).facade_span_export == MEASURED_BEST
    provider = tracing.setup_tracing(TracingSettings(endpoint=receiver.grpc_endpoint))
    assert provider is not None
    assert [type(p) for p in processors(provider)] == [PROCESSOR_OF[MEASURED_BEST]]


def test_serve_flag_choices_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["serve", "--span-export", "batch"]).span_export == "batch"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    assert f"default: {DEFAULT_SPAN_EXPORT}" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--span-export", "inline"])


def test_an_unknown_choice_is_refused_naming_the_setting() -> None:
    settings = Settings(
        "127.0.0.1:0",
        "127.0.0.1:8001",
        (ModelSpec("m", "m", Path("t")),),
        insecure_dev=True,
        span_export="inline",
    )
    with pytest.raises(SettingsError, match="span_export: must be one of child, batch"):
        settings.validate()
    with pytest.raises(ValueError, match=r"tracing\.span_export"):
        TracingSettings(span_export="inline").validate()
