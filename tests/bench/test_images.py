"""The image scenario without servers: screenshots, the requests every path sends, the report's
per-request figures, and the flags."""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from PIL import Image

from autoglm.bench import cli, image_cost, image_report
from autoglm.bench.harness import BenchOptions
from autoglm.bench.image_paths import OpenAIChatPath, chat_body, data_url
from autoglm.bench.image_workload import SYSTEM, ImageRequest, ImageWorkload, image_requests
from autoglm.bench.loadgen import LoadSpec, run_load
from autoglm.bench.report import BenchReport, RunResult, table, to_json
from autoglm.bench.screenshots import SIZE, screenshot
from autoglm.bench.stats import Dist, Summary
from autoglm.bench.workload import LengthDist
from autoglm.build_engine.tiny_vlm import TINY_VLM_NAME
from autoglm.server.devstack.pki import ensure_dev_pki
from autoglm.server.engine.text_request import build_text_infer_request
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.triton_models import vllm_contract as vc


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    return [screenshot(0), screenshot(1)]


@pytest.fixture(scope="module")
def vlm(vlm_dir: Path) -> ServedModel:
    return load_model(ModelSpec("vlm", "vlm-triton", vlm_dir, engine="cpu_reference_vl"))


@pytest.fixture(scope="module")
def requests(vlm: ServedModel, pngs: list[bytes]) -> list[ImageRequest]:
    return image_requests(vlm, pngs, LengthDist(16, 16), seed=3)


def test_screenshots_are_phone_sized_reproducible_and_different(pngs: list[bytes]) -> None:
    assert screenshot(0) == pngs[0]
    assert pngs[0] != pngs[1]
    for png in pngs:
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.size == SIZE == (1080, 2400)
        # the agent's screenshots: ~1.2 MB as base64
        assert 1.0e6 < len(base64.b64encode(png)) < 1.4e6


def test_the_direct_request_is_what_the_facade_sends(
    requests: list[ImageRequest], vlm: ServedModel, pngs: list[bytes]
) -> None:
    assert vlm.vision is not None
    for req, png in zip(requests, pngs, strict=True):
        engine = req.engine
        assert req.png == png and req.system == SYSTEM and req.max_tokens == 16
        assert engine.triton_model == "vlm-triton" and engine.max_new_tokens == 16
        # the chat template's rendering: the system prompt, then one placeholder, then the task
        prompt = engine.prompt
        assert prompt.count(vlm.vision.placeholder) == 1
        assert prompt.index(SYSTEM) < prompt.index(vlm.vision.placeholder) < prompt.index(req.task)
        # the screenshot resized to the model's budget, re-encoded (not the original)
        assert req.checked is not None and list(engine.images) == [req.checked.data]
        with Image.open(io.BytesIO(engine.images[0])) as image:
            assert image.size == (448, 1036) == (req.checked.width, req.checked.height)
        assert req.checked.tokens == 592
        assert engine.sampling.runtime_top_k == 1  # temperature 0: greedy
    assert requests[0].task != requests[1].task


def test_the_text_twin_drops_the_screenshot_only(requests: list[ImageRequest]) -> None:
    twin = requests[0].text_twin()
    assert twin.png is None and twin.checked is None
    assert (twin.task, twin.system, twin.max_tokens) == (
        requests[0].task,
        requests[0].system,
        requests[0].max_tokens,
    )


def test_the_openai_body_carries_the_screenshot_as_a_data_url(
    requests: list[ImageRequest], tmp_path: Path
) -> None:
    req = requests[0]
    body = chat_body("vlm", req)
    system, user = body["messages"]
    assert system == {"role": "system", "content": SYSTEM}
    image, text = user["content"]
    url = image["image_url"]["url"]
    assert url == data_url(req.png or b"") and url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == req.png
    assert text == {"type": "text", "text": req.task}
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert chat_body("vlm", req.text_twin())["messages"][1]["content"] == req.task
    path = OpenAIChatPath("127.0.0.1:1", ensure_dev_pki(tmp_path / "pki"), "t", "vlm")
    first = path.request_body(req)
    assert path.request_body(req) is first  # built once per request of the workload
    assert orjson.loads(first) == body
    assert path._head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


async def test_run_load_takes_the_image_workload(requests: list[ImageRequest]) -> None:
    seen: list[int] = []

    async def stream(req: ImageRequest):  # type: ignore[no-untyped-def]
        seen.append(req.index)
        yield 1

    spec = LoadSpec(concurrency=1, warmup_s=0.0, duration_s=None, num_requests=5)
    result = await run_load(stream, ImageWorkload(requests), spec)
    assert len(result.records) == 5 and seen == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError):
        ImageWorkload([])


def test_image_cost_measures_the_facades_functions(
    requests: list[ImageRequest], vlm: ServedModel
) -> None:
    assert vlm.vision is not None
    cost = image_cost.measure(requests[:1], vlm.vision, repeats=1)
    assert cost["source_size"] == [1080, 2400] and cost["resized_size"] == [448, 1036]
    assert cost["image_tokens"] == 592 and cost["screenshots"] == 1
    assert cost["png_bytes_mean"] == len(requests[0].png or b"")
    assert cost["base64_bytes_mean"] == len(base64.b64encode(requests[0].png or b""))
    assert 0 < cost["resized_bytes_mean"] < cost["png_bytes_mean"]
    for name in ("check_images", "engine_request", "data_url_decode"):
        assert cost[name]["cpu_ms_p50"] >= 0 and cost[name]["wall_ms_p50"] > 0
    json.dumps(cost, allow_nan=False)


def _summary(requests: int, tokens: int, ttft: float, cpu: dict[str, float]) -> Summary:
    return Summary(
        requests=requests,
        ok=requests,
        errors={},
        output_tokens=tokens,
        duration_s=10.0,
        ttft_ms=Dist(ttft, ttft + 10, ttft + 20, ttft, requests),
        itl_ms=Dist(2, 3, 4, 2, tokens),
        e2e_ms=Dist(ttft + 60, ttft + 80, ttft + 90, ttft + 60, requests),
        cpu=cpu,
    )


def _image_report() -> BenchReport:
    report = BenchReport({"nproc": 2}, {})
    runs = {
        "direct": _summary(50, 1600, 80.0, {"facade": 0.05, "triton": 5.0, "loadgen": 0.5}),
        "facade": _summary(25, 800, 200.0, {"facade": 3.0, "triton": 2.5, "loadgen": 0.3}),
        "openai": _summary(20, 640, 210.0, {"facade": 2.6, "triton": 2.0, "loadgen": 0.2}),
        "text": _summary(200, 6400, 8.0, {"facade": 1.2, "triton": 2.0, "loadgen": 0.4}),
    }
    for path, s in runs.items():
        report.runs.append(RunResult("images", "vlm", "c=1", path, s, 0.0))
    report.images["image_seconds"] = {
        "c=1": {"facade": image_report.dist_json([0.1, 0.11, 0.12])},
    }
    report.images["cost"] = {
        "screenshots": 4,
        "repeats": 5,
        "png_bytes_mean": 900_000.0,
        "base64_bytes_mean": 1_200_000.0,
        "resized_bytes_mean": 200_000.0,
        "source_size": [1080, 2400],
        "resized_size": [448, 1036],
        "image_tokens": 592,
        **{
            name: {"wall_ms_p50": 1.0, "cpu_ms_p50": 1.0, "cpu_ms_min": 1.0, "cpu_ms_max": 1.0}
            for name in ("check_images", "engine_request", "data_url_decode")
        },
    }
    return report


def test_image_comparison_per_request() -> None:
    report = _image_report()
    (c,) = to_json(report)["image_comparisons"]
    assert c["level"] == "c=1" and c["direct_ttft_p50_ms"] == 80.0
    assert c["facade_added_ttft_p50_ms"] == 120.0 and c["openai_added_ttft_p50_ms"] == 130.0
    assert c["facade_tokens_per_s_ratio"] == 0.5 and c["openai_tokens_per_s_ratio"] == 0.4
    # façade CPU seconds in the window ÷ requests started in it, in ms
    assert c["facade_cpu_ms_per_request"] == pytest.approx(120.0)
    assert c["openai_cpu_ms_per_request"] == pytest.approx(130.0)
    assert c["text_cpu_ms_per_request"] == pytest.approx(6.0)
    assert c["facade_image_cpu_ms_per_request"] == pytest.approx(114.0)
    assert c["openai_image_cpu_ms_per_request"] == pytest.approx(124.0)
    assert c["direct_triton_cpu_ms_per_request"] == pytest.approx(100.0)
    assert c["direct_tokens_per_request"] == 32 and c["text_tokens_per_request"] == 32
    assert c["facade_image_seconds"]["p50_ms"] == pytest.approx(110.0)
    assert c["facade_image_seconds"]["count"] == 3
    assert c["openai_image_seconds"] == {}
    # the image scenario is left out of the per-token comparisons
    assert to_json(report)["comparisons"] == [] and report.pairs() == []


def test_image_lines_in_the_table() -> None:
    text = table(_image_report())
    assert "façade vs direct (same run)" not in text  # nothing per token to compare
    assert "images (the agent's step" in text
    assert "4 PNG screenshots 1080x2400, mean 0.90 MB (1.20 MB as base64)" in text
    assert "gRPC 200.0 (+120.0)" in text and "OpenAI 210.0 (+130.0)" in text
    assert "image handling gRPC 114.0 ms, OpenAI 124.0 ms" in text
    assert "text-only gRPC 6.0 ms" in text
    assert "autoglm.image_seconds p50: gRPC 110.0 ms (n=3), OpenAI - ms (n=0)" in text
    assert "check_images 1.0 ms CPU" in text


def test_without_a_text_twin_the_image_share_is_unknown() -> None:
    report = _image_report()
    report.runs = [r for r in report.runs if r.path != "text"]
    (c,) = image_report.image_comparisons(report)
    assert math.isnan(c["facade_image_cpu_ms_per_request"])
    assert "text_cpu_ms_per_request" not in c
    json.dumps(to_json(report), allow_nan=False)


def _span(start_ns: int, seconds: float | None) -> trace_pb2.Span:
    span = trace_pb2.Span(name="POST /v1/chat/completions", start_time_unix_nano=start_ns)
    span.attributes.append(
        common_pb2.KeyValue(key="autoglm.images", value=common_pb2.AnyValue(int_value=1))
    )
    if seconds is not None:
        value = common_pb2.AnyValue(double_value=seconds)
        span.attributes.append(common_pb2.KeyValue(key=image_report.IMAGE_SECONDS, value=value))
    return span


def test_image_seconds_from_the_facades_spans_by_window() -> None:
    spans = [_span(100, 0.1), _span(150, None), _span(200, 0.2), _span(300, 0.3)]
    samples = image_report.image_seconds(spans)
    assert samples == [(100, 0.1), (200, 0.2), (300, 0.3)]
    assert image_report.in_window(samples, (100, 300)) == [0.1, 0.2]  # [start, end)
    assert image_report.dist_json([])["count"] == 0


def test_cpu_per_request_without_requests_is_unknown() -> None:
    assert math.isnan(image_report.cpu_ms_per_request(_summary(0, 0, 1, {"facade": 1}), "facade"))
    assert math.isnan(image_report.cpu_ms_per_request(_summary(5, 5, 1, {}), "facade"))


def test_flags_and_options(tmp_path: Path, vlm_dir: Path, model_dir: Path) -> None:
    assert cli.VL_MODEL_NAME == TINY_VLM_NAME
    args = cli.build_parser().parse_args(
        ["--scenario", "images", "--image-concurrency", "1,2", "--image-output-len", "8-16",
         "--screenshots", "3"]
    )  # fmt: skip
    assert args.image_concurrency == (1, 2) and args.image_output_len == LengthDist(8, 16)
    assert args.screenshots == 3 and args.vl_model_dir is None
    opts = BenchOptions(
        model_dir=model_dir, out_dir=tmp_path, scenarios=("images",), vl_model_dir=vlm_dir
    )
    opts.validate()
    with pytest.raises(ValueError, match="vl_model_dir"):
        BenchOptions(
            model_dir=model_dir, out_dir=tmp_path, scenarios=("images",), vl_model_dir=tmp_path
        ).validate()
    with pytest.raises(ValueError, match="screenshots"):
        BenchOptions(
            model_dir=model_dir,
            out_dir=tmp_path,
            scenarios=("images",),
            vl_model_dir=vlm_dir,
            screenshots=0,
        ).validate()


def test_the_vllm_contract_image_tensor_is_what_direct_sends(
    requests: list[ImageRequest],
) -> None:
    """The request the direct path builds carries the resized file as base64, one element."""
    built = build_text_infer_request(replace(requests[0].engine, request_id="x"))
    names = [t.name for t in built.inputs]
    i = names.index(vc.IMAGE.name)
    assert list(built.inputs[i].shape) == [1]
    raw = built.raw_input_contents[i]
    assert base64.b64decode(raw[4:]) == requests[0].engine.images[0]
