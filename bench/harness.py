"""Start the stack, run every scenario on every path, write JSON + table + plots."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from autoglm.bench import image_cost
from autoglm.bench.image_runner import ImageScenario, run_images
from autoglm.bench.image_workload import image_requests
from autoglm.bench.loadgen import LoadSpec
from autoglm.bench.lora_runner import (
    ADAPTERS,
    BASE,
    MIXED,
    ONE,
    LoraScenario,
    register_adapters,
    run_lora,
)
from autoglm.bench.report import PATHS, BenchReport, table, to_json
from autoglm.bench.runner import RunConfig, Scenario, run_all, scenario_loads
from autoglm.bench.screenshots import screenshots
from autoglm.bench.stack import BenchStack, EngineModel, StackOptions
from autoglm.bench.workload import LengthDist, Workload, token_cycle
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.server.telemetry.span_export import DEFAULT_SPAN_EXPORT

# "images": the agent's screenshot step on the tiny GLM-4.1V (image_runner.py); "lora": the CPU
# model alone, with one LoRA adapter and with 8 mixed (lora_runner.py)
SCENARIOS = ("paced", "unpaced", "cpu-model", "images", "lora")
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    model_dir: Path  # SmolLM2 HF folder (tokenizer for every scenario, weights for cpu-model)
    out_dir: Path
    scenarios: tuple[str, ...] = ("paced", "unpaced")
    concurrency: tuple[int, ...] = (1, 8, 32, 64, 128)
    rate: float | None = None
    cpu_concurrency: tuple[int, ...] = (1, 4)
    tokens_per_second: float = 40.0
    prompt_len: LengthDist = field(default_factory=lambda: LengthDist(128, 128))
    output_len: LengthDist = field(default_factory=lambda: LengthDist(64, 64))
    cpu_output_len: LengthDist = field(default_factory=lambda: LengthDist(32, 32))
    # The image scenario: the vision-language model's HF folder (the tiny random-weight
    # GLM-4.1V), its levels (streams in flight), output tokens, and how many different
    # screenshots the requests take in turn.
    vl_model_dir: Path | None = None
    image_concurrency: tuple[int, ...] = (1, 2)
    image_output_len: LengthDist = field(default_factory=lambda: LengthDist(32, 32))
    screenshots: int = 4
    warmup_s: float = 3.0
    # Concurrency mode: spread the streams' starts over this much of the warm-up; None = one
    # paced request's length for the paced scenario (see ramp_up_for), 0 for the others.
    ramp_up_s: float | None = None
    duration_s: float | None = 15.0
    num_requests: int | None = None
    check_concurrency: int = 64
    # runner.PATHS: direct Triton (always: every figure is read against it), the façade's gRPC
    # API ("facade") and its OpenAI front door ("openai", SSE)
    paths: tuple[str, ...] = PATHS
    facade_workers: int = 1  # `autoglm serve --workers N` (SO_REUSEPORT scale-out)
    facade_span_export: str = DEFAULT_SPAN_EXPORT  # `autoglm serve --span-export`
    engine_link: str = "unix"  # "unix" | "tls": how both paths reach Triton (stack.py)
    # Also measure the floors (bare_relay.py, byte_hop.py) and the direct path twice (the
    # run's own noise): runner.py, "floor" in report.py.
    floor: bool = False
    profile_seconds: float = 0.0
    plots: bool = True
    seed: int = 0
    workdir: Path | None = None

    def validate(self) -> None:
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown or not self.scenarios:
            raise ValueError(f"scenario: use {', '.join(SCENARIOS)}, got {sorted(unknown)}")
        unknown_paths = set(self.paths) - set(PATHS)
        if unknown_paths or "direct" not in self.paths:
            raise ValueError(
                f"paths: use {', '.join(PATHS)}, direct always (the baseline); "
                f"got {', '.join(self.paths)}"
            )
        if self.ramp_up_s is not None and not 0 <= self.ramp_up_s <= self.warmup_s:
            raise ValueError(
                f"ramp_up: must be between 0 and the warm-up ({self.warmup_s:g} s), "
                f"got {self.ramp_up_s:g} s"
            )
        if self.floor and self.engine_link != "unix":
            raise ValueError(
                "floor: the floors reach Triton by its unix socket; use --engine-link unix"
            )
        if not (self.model_dir / "tokenizer.json").is_file():
            raise ValueError(f"model_dir: {self.model_dir} holds no tokenizer.json")
        if "images" in self.scenarios:
            vl = self.vl_model_dir
            if vl is None or not (vl / "preprocessor_config.json").is_file():
                raise ValueError(
                    f"vl_model_dir: {vl} is not a vision-language model folder "
                    "(`autoglm model prepare` writes the tiny GLM-4.1V)"
                )
            if self.screenshots < 1:
                raise ValueError(f"screenshots: must be >= 1, got {self.screenshots}")


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def _engine_models(o: BenchOptions) -> dict[str, EngineModel]:
    return {
        "paced": EngineModel(f"bench-synthetic-{o.tokens_per_second:g}tps", o.tokens_per_second),
        "unpaced": EngineModel("bench-synthetic-unpaced", 0.0),
        "cpu-model": EngineModel("bench-smollm2-cpu", None),
        "images": EngineModel("bench-glm4v-tiny-cpu", None, vl_dir=o.vl_model_dir),
        "lora": EngineModel("bench-smollm2-cpu", None),  # the cpu-model's engine, adapters on
    }


def ramp_up_for(o: BenchOptions, scenario: str) -> float:
    """Seconds over which a concurrency level's streams start (LoadSpec.ramp_up_s).

    Paced, by default one request's length (mean output ÷ pace, at most the warm-up): the
    streams then start evenly over one cycle and new requests arrive steadily, as they would
    at a GPU serving 64 streams. Started in the same instant, streams of equal length at the
    same pace stay in lock-step: a burst of every new request at once, once per cycle
    (docs/benchmarks.md, "What a run sets up"). `--ramp-up 0` measures that burst.
    """
    if o.ramp_up_s is not None:
        return o.ramp_up_s
    if scenario != "paced" or o.tokens_per_second <= 0:
        return 0.0
    mean_output = (o.output_len.low + o.output_len.high) / 2
    return min(o.warmup_s, mean_output / o.tokens_per_second)


def _config(o: BenchOptions, models: dict[str, EngineModel]) -> RunConfig:
    base = LoadSpec(
        concurrency=1,
        warmup_s=o.warmup_s,
        duration_s=o.duration_s,
        num_requests=o.num_requests,
        seed=o.seed,
    )
    scenarios = []
    for name in o.scenarios:
        if name in ("images", "lora"):  # image_runner.py, lora_runner.py: their own runs
            continue
        cpu = name == "cpu-model"
        levels = o.cpu_concurrency if cpu else o.concurrency
        out_len = o.cpu_output_len if cpu else o.output_len
        loads = scenario_loads(levels, o.rate, replace(base, ramp_up_s=ramp_up_for(o, name)))
        scenarios.append(Scenario(name, models[name], loads, out_len))
    return RunConfig(
        scenarios=tuple(scenarios),
        prompt_len=o.prompt_len,
        check_concurrency=o.check_concurrency,
        paths=o.paths,
        profile_seconds=o.profile_seconds,
        profile_dir=o.out_dir / "profiles",
        seed=o.seed,
    )


def _image_scenario(
    o: BenchOptions, model: EngineModel, served: ServedModel, report: BenchReport, log: Log
) -> ImageScenario:
    """The screenshots (drawn from the seed), the requests on them, and what check_images costs
    on them in-process, measured now, before the stack starts: on a quiet machine."""
    pngs = screenshots(o.screenshots, seed=o.seed)
    requests = tuple(image_requests(served, pngs, o.image_output_len, seed=o.seed))
    assert served.vision is not None
    report.images["cost"] = cost = image_cost.measure(requests, served.vision)
    log(
        f"{len(pngs)} screenshots, mean {cost['png_bytes_mean'] / 1e6:.2f} MB PNG; "
        f"check_images {cost['check_images']['cpu_ms_p50']:.1f} ms CPU in-process (median)"
    )
    base = LoadSpec(
        concurrency=1,
        warmup_s=o.warmup_s,
        duration_s=o.duration_s,
        num_requests=o.num_requests,
        seed=o.seed,
        ramp_up_s=o.ramp_up_s or 0.0,
    )
    loads = scenario_loads(o.image_concurrency, None, base)
    return ImageScenario(model, loads, requests, o.paths)


def _served(o: BenchOptions, m: EngineModel) -> ServedModel:
    if m.vl_dir is not None:  # the façade's --model …,engine=cpu_reference_vl (stack.py)
        spec = ModelSpec(m.name, m.name, m.vl_dir, engine="cpu_reference_vl")
    else:
        spec = ModelSpec(name=m.name, triton_model=m.name, tokenizer_dir=o.model_dir)
    return load_model(spec)


def _lora_scenario(o: BenchOptions, model: EngineModel, registry: Path) -> LoraScenario:
    """The adapters, registered now (before the stack starts: the façade verifies them at
    start), and the scenario's levels: the CPU model's."""
    adapters = register_adapters(o.model_dir, registry, model.name, seed=o.seed)
    base = LoadSpec(
        concurrency=1,
        warmup_s=o.warmup_s,
        duration_s=o.duration_s,
        num_requests=o.num_requests,
        seed=o.seed,
        ramp_up_s=o.ramp_up_s or 0.0,
    )
    loads = scenario_loads(o.cpu_concurrency, None, base)
    return LoraScenario(model, loads, o.cpu_output_len, adapters)


async def _run(
    stack: BenchStack,
    served: dict[str, ServedModel],
    cfg: RunConfig,
    images: ImageScenario | None,
    report: BenchReport,
    log: Log,
    lora: tuple[LoraScenario, Callable[[], Workload]] | None = None,
) -> None:
    if cfg.scenarios:
        await run_all(stack, served, cfg, report, log)
    if lora is not None:
        await run_lora(stack, lora[0], lora[1], report, log, step=len(cfg.scenarios))
    if images is not None:
        await run_images(stack, images, report, log, step=len(cfg.scenarios))


def run_bench(o: BenchOptions, log: Log = print) -> BenchReport:
    o.validate()
    models = _engine_models(o)
    used = tuple(dict.fromkeys(models[s] for s in o.scenarios))  # lora shares cpu-model's
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-") as tmp:
        work = o.workdir or Path(tmp)
        served = {m.name: _served(o, m) for m in used}
        # The synthetic engine streams SmolLM2's ids (the façade detokenizes them with it).
        text = [served[m.name] for m in used if m.vl_dir is None]
        smollm = text[0] if text else _served(o, models["cpu-model"])
        tok = smollm.encoder.tokenizer
        cycle = token_cycle(lambda s: tok.encode(s, add_special_tokens=False).ids)
        report = BenchReport(machine_info(), _options_json(o))
        images = None
        if "images" in o.scenarios:
            vlm = models["images"]
            images = _image_scenario(o, vlm, served[vlm.name], report, log)
            report.notes.append(
                "images: every path sends the same agent steps (system prompt, screenshot, "
                "instruction; temperature 0, streamed). direct: Triton's ModelStreamInfer on the "
                "vLLM contract with what the façade sends for each step, built by the façade's "
                "own functions: the rendered prompt with its image placeholder and the "
                "screenshot already resized to the model's budget (so the façade's figures hold "
                "all of its image handling); facade: GenerateStream through autoglm.client "
                "(AsyncClient, an Image part); openai: POST /v1/chat/completions with a data: "
                "URL; text: the facade path without the screenshot (a request without image "
                "handling). Token counts on the façade's paths from usage (sse.token_split)"
            )
        report.notes.append(
            "façade: subprocess `autoglm serve` with mTLS + bearer token + tracing "
            "(OTLP/gRPC, "
            + (
                "exported by its span exporter child process, counted as the façade's CPU"
                if o.facade_span_export == "child"
                else "exported by the SDK's BatchSpanProcessor in the façade's process"
            )
            + ") "
            "to an in-harness no-op sink; Triton: engine link "
            + (
                "unix socket in a private directory"
                if o.engine_link == "unix"
                else "mTLS over loopback TCP"
            )
            + " + restricted-protocol secret, for every path; Triton's own tracing off"
        )
        if "openai" in o.paths and set(o.scenarios) - {"images"}:
            report.notes.append(
                "openai path: the same façade's OpenAI front door (`serve --openai-listen`), "
                "POST /v1/completions with the gRPC path's prompt text, max_tokens and "
                "temperature 0, streamed (SSE) with stream_options.include_usage, over TLS "
                "(server-authenticated, as OpenAI clients connect) + the same bearer token; "
                "tokens per chunk from usage.completion_tokens (one a chunk when they agree, "
                "else the surplus by text length: sse.token_split)"
            )
        if o.rate is None:
            ramps = ", ".join(f"{s} {ramp_up_for(o, s):g} s" for s in o.scenarios)
            report.notes.append(f"streams' starts spread over (ramp-up): {ramps}")
        lora = None
        if "lora" in o.scenarios:
            registry = work / "adapters"
            log(f"registering {ADAPTERS} LoRA adapters of {models['lora'].name} in {registry}")
            lora_sc = _lora_scenario(o, models["lora"], registry)

            def workload() -> Workload:
                return Workload(o.prompt_len, o.cpu_output_len, _encode, tok.decode, seed=o.seed)

            def _encode(text: str) -> list[int]:
                return tok.encode(text, add_special_tokens=False).ids

            lora = (lora_sc, workload)
            report.notes.append(
                f"lora: the CPU model through the façade's gRPC API, alone ({BASE}), with one "
                f"adapter ({ONE}) and with {ADAPTERS} adapters named in turn by the requests, so "
                f"concurrent streams mix them ({MIXED}); rank-8 PEFT adapters on q_proj and "
                "v_proj (tiny_lora.py), each task's weights sent with its first request"
            )
        log(f"starting Triton ({', '.join(m.name for m in used)}) and the façade in {work}")
        stack_opts = StackOptions(
            work,
            o.model_dir,
            used,
            cycle,
            facade_workers=o.facade_workers,
            span_export=o.facade_span_export,
            engine_link=o.engine_link,
            floors=o.floor,
            openai="openai" in o.paths,
            adapters_dir=work / "adapters" if lora is not None else None,
        )
        with BenchStack(stack_opts) as stack:
            openai = f", OpenAI on https://{stack.openai_endpoint}" if stack.openai_endpoint else ""
            log(
                f"façade pid {stack.facade_pid} on {stack.facade_endpoint}{openai}; "
                f"Triton pid {stack.triton.pid if stack.triton else '?'}"
            )
            asyncio.run(_run(stack, served, _config(o, models), images, report, log, lora))
            report.notes.append(f"spans received by the sink: {stack.sink.spans}")
        report.machine["loadavg_at_end"] = os.getloadavg()
    write_outputs(report, o, log)
    return report


def _options_json(o: BenchOptions) -> dict[str, Any]:
    d = asdict(o)
    return json.loads(json.dumps(d, default=str))


def write_outputs(report: BenchReport, o: BenchOptions, log: Callable[[str], None]) -> None:
    o.out_dir.mkdir(parents=True, exist_ok=True)
    (o.out_dir / "results.json").write_text(json.dumps(to_json(report), indent=2) + "\n")
    text = table(report)
    (o.out_dir / "results.txt").write_text(text + "\n")
    log(text)
    if o.plots:
        from autoglm.bench.plots import plot

        try:
            for p in plot(report, o.out_dir):
                log(f"plot: {p}")
        except ImportError:
            log("no plots: matplotlib is missing (pip install -e '.[bench]')")
