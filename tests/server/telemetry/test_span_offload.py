"""span_offload.py: spans exported by the real child process to a stand-in OTLP receiver."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from autoglm.server.telemetry import span_export_child
from autoglm.server.telemetry.span_offload import OffloadSpanProcessor
from autoglm.server.telemetry.span_wire import frame
from autoglm.server.telemetry.tracing import TracingSettings
from tests.support.otlp_receiver import OtlpReceiver

RESOURCE = Resource({"service.name": "autoglm-offload-test"})


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def fields(receiver: OtlpReceiver, protocol: str = "grpc") -> dict[str, object]:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_traces_url
    settings = TracingSettings(endpoint=endpoint, protocol=protocol)
    return dataclasses.asdict(settings)


def tracer_with(processor: OffloadSpanProcessor) -> TracerProvider:
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(processor)
    return provider


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_every_span_reaches_the_receiver(receiver: OtlpReceiver, protocol: str) -> None:
    processor = OffloadSpanProcessor(fields(receiver, protocol), RESOURCE, frame_spans=64)
    provider = tracer_with(processor)
    tracer = provider.get_tracer("t")
    for i in range(300):
        with tracer.start_as_current_span(f"root {i}"), tracer.start_as_current_span("child"):
            pass
    assert processor.force_flush(20_000)
    spans = receiver.wait_for(lambda s: len(s) >= 600, timeout=10)
    assert len(spans) == 600 and processor.dropped == 0
    roots = {s.span_id: s for s in spans if s.name.startswith("root ")}
    children = [s for s in spans if s.name == "child"]
    assert len(roots) == 300 and all(c.parent_span_id in roots for c in children)
    assert {s.service_name for s in spans} == {"autoglm-offload-test"}
    provider.shutdown()


def test_shutdown_exports_what_is_queued(receiver: OtlpReceiver) -> None:
    processor = OffloadSpanProcessor(fields(receiver), RESOURCE, send_interval_s=60)
    provider = tracer_with(processor)
    for i in range(10):
        with provider.get_tracer("t").start_as_current_span(f"s{i}"):
            pass
    provider.shutdown()  # no flush first: the child gets them and exports them as it exits
    assert len(receiver.wait_for(lambda s: len(s) >= 10, timeout=10)) == 10
    assert not processor.force_flush(100)  # after shutdown: nothing to flush to


def test_a_full_queue_drops_and_counts_never_blocks(receiver: OtlpReceiver) -> None:
    processor = OffloadSpanProcessor(
        fields(receiver), RESOURCE, max_queue=10, frame_spans=1000, send_interval_s=60
    )
    provider = tracer_with(processor)
    for i in range(15):  # the writer waits 60 s: ending a span must not wait for it
        with provider.get_tracer("t").start_as_current_span(f"s{i}"):
            pass
    assert processor.dropped == 5
    assert processor.force_flush(20_000)
    assert sorted(s.name for s in receiver.wait_for(lambda s: len(s) >= 10)) == sorted(
        f"s{i}" for i in range(10)
    )
    provider.shutdown()


def test_a_dead_child_is_replaced(receiver: OtlpReceiver) -> None:
    processor = OffloadSpanProcessor(fields(receiver), RESOURCE, restart_after_s=0)
    provider = tracer_with(processor)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("before"):
        pass
    assert processor.force_flush(20_000)
    first = processor._child
    assert first is not None
    first.proc.kill()
    first.proc.wait()
    with processor._cond:  # the ack reader sees the end of the child's stdout
        assert processor._cond.wait_for(lambda: not first.alive, 10)
    with tracer.start_as_current_span("after"):
        pass
    assert processor.force_flush(20_000)
    assert processor._child is not None and processor._child is not first
    names = {s.name for s in receiver.wait_for(lambda s: len(s) >= 2)}
    assert names == {"before", "after"}
    provider.shutdown()


def test_a_child_that_cannot_export_fails_the_flush_without_hanging(
    receiver: OtlpReceiver,
) -> None:
    # A "child" that exits at once: the flush is answered as failed (not left to time out),
    # and shutdown returns.
    processor = OffloadSpanProcessor(
        fields(receiver), RESOURCE, command=[sys.executable, "-c", "pass"], restart_after_s=0
    )
    provider = tracer_with(processor)
    with provider.get_tracer("t").start_as_current_span("lost"):
        pass
    assert not processor.force_flush(60_000)
    assert processor._flush_done >= 1  # answered: a timeout would have left it at 0
    provider.shutdown()
    assert receiver.spans == []


def test_child_refuses_another_wire_version() -> None:
    inp = io.BytesIO(frame(("init", 999, {}, {}, "", None)))
    assert span_export_child.serve(inp, io.BytesIO()) == 2


def test_child_answers_flushes_in_order(receiver: OtlpReceiver) -> None:
    init = frame(("init", 1, fields(receiver), {"service.name": "x"}, "", None))
    out = io.BytesIO()
    code = span_export_child.serve(
        io.BytesIO(init + frame(("flush", 1)) + frame(("flush", 2))), out
    )
    assert code == 0
    assert out.getvalue() == frame(("ack", 1, True)) + frame(("ack", 2, True))


def test_child_outlives_ctrl_c_and_sigterm_until_its_input_ends(receiver: OtlpReceiver) -> None:
    processor = OffloadSpanProcessor(fields(receiver), RESOURCE)
    provider = tracer_with(processor)
    assert processor.force_flush(20_000)  # answered: the child runs its loop, signals set
    child = processor._child
    assert child is not None
    os.kill(child.proc.pid, signal.SIGINT)
    os.kill(child.proc.pid, signal.SIGTERM)
    # Both signals are pending (or discarded, when ignored) once kill() returns; a fatal one
    # would end the child before it reads the next frame. An answered flush is the condition
    # that it read on past them: the same child, still running.
    assert processor.force_flush(20_000)
    assert processor._child is child and child.proc.poll() is None
    with provider.get_tracer("t").start_as_current_span("after signals"):
        pass
    provider.shutdown()
    assert [s.name for s in receiver.wait_for(lambda s: len(s) >= 1)] == ["after signals"]
    assert child.proc.returncode == 0


def test_a_bad_queue_size_is_refused_naming_the_variable(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
    with pytest.raises(ValueError, match="OTEL_BSP_MAX_QUEUE_SIZE='lots'"):
        OffloadSpanProcessor(fields(receiver), RESOURCE)
