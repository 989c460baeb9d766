"""The build plan: one frozen settings object, validated, and the exact ordered build steps.

Pure logic: nothing here touches the disk except `save`/`load` (plan.json), nothing runs a process.

`trtllm-build` flags are those of TensorRT-LLM 1.2.x (the pinned release, facts.md), read from:
- NVIDIA/TensorRT-LLM `tensorrt_llm/commands/build.py` at commit
  65f1d1536e18aea3380e6e270e00895a709333eb (the 1.x line: no auto-parallel options,
  `--kv_cache_type` via `enum_type(KVCacheType)` with `from_string`): `--checkpoint_dir`,
  `--output_dir`, `--max_batch_size`, `--max_input_len`, `--max_seq_len`, `--max_beam_width`,
  `--max_num_tokens`, `--kv_cache_type {continuous,paged,disabled}`, `--input_timing_cache`,
  `--output_timing_cache`, `--workers`, `--log_level`.
- `tensorrt_llm/plugin/plugin.py` at commit c20322ffd3dc0740ca530c9fad989b22e64f6e06 (pydantic
  `PluginConfig`, `cli_plugin_args`, `add_plugin_argument`): `--gpt_attention_plugin` and
  `--gemm_plugin` accept "auto" (= the checkpoint's dtype); boolean features take
  enable/disable: `--remove_input_padding`, `--use_paged_context_fmha`, `--use_fp8_context_fmha`,
  `--multiple_profiles`. `--paged_kv_cache` is deprecated there in favour of `--kv_cache_type`.
- LoRA (same build.py): `--max_lora_rank` (int, default 64, "used to compute the workspace size
  of lora plugin") and `--lora_target_modules` (nargs "+", choices
  `LoraManager.LORA_MODULE_IDS.keys()`: attn_q, attn_k, attn_v, attn_dense, mlp_h_to_4h,
  mlp_gate, mlp_4h_to_h, ...); `--lora_plugin` is a plugin option of plugin.py (`_lora_plugin`,
  "Enable LoRA.", a dtype or "auto"). The adapters' weights are not built in (no `--lora_dir`):
  requests bring them (`lora_weights` / `lora_config`, triton_models/lora_contract.py).
The 1.2.1 tag itself is not in the stored sources; a GPU host confirms with `trtllm-build --help`
(scripts/gpu-acceptance.sh prints it).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from autoglm.build_engine.skus import (
    GPU_BASE_PRECISIONS,
    SkuError,
    check_kv_cache_dtype,
    check_precision,
    get_sku,
)
from autoglm.triton_models import lora_contract as lc

PROFILES: tuple[str, ...] = ("latency", "throughput")
# Our own entry point (cli.py); `autoglm build <cmd>` once wired into the main CLI.
ENTRY: tuple[str, ...] = ("-m", "autoglm.build_engine.cli")
PLAN_FILE = "plan.json"


class PlanError(ValueError):
    """A build plan field has an impossible value."""


@dataclass(frozen=True, slots=True)
class BuildPlan:
    model_dir: Path
    sku: str
    precision: str
    output_dir: Path
    kv_cache_dtype: str = "auto"
    tp: int = 1
    pp: int = 1
    max_batch: int = 8
    max_input_len: int = 1024
    max_seq_len: int = 2048
    max_num_tokens: int = 4096
    profile: str = "latency"
    # Where `install` puts the result, and under which Triton model name.
    model_repo: Path | None = None
    model_name: str = "tensorrt_llm"
    # Calibration / held-out text (a local file or folder; nothing is downloaded).
    calib_path: Path | None = None
    heldout_path: Path | None = None
    # LoRA adapters served from the engine: 0 = built without the LoRA plugin. Else the largest
    # adapter rank and the TensorRT-LLM modules adapters may target (lora_contract.MODULE_IDS).
    max_lora_rank: int = 0
    lora_target_modules: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise PlanError naming the first bad field."""
        try:
            sku = check_precision(self.sku, self.precision)
            check_kv_cache_dtype(sku, self.precision, self.kv_cache_dtype)
        except SkuError as exc:
            raise PlanError(str(exc)) from None
        for name in ("tp", "pp", "max_batch", "max_input_len", "max_seq_len", "max_num_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlanError(f"{name}: {value!r} must be an integer >= 1")
        if self.profile not in PROFILES:
            raise PlanError(f"profile: {self.profile!r} is not one of {', '.join(PROFILES)}")
        if self.max_input_len > self.max_seq_len:
            raise PlanError(
                f"max_input_len ({self.max_input_len}) must be <= max_seq_len ({self.max_seq_len})"
            )
        # With remove_input_padding the context phase packs up to max_num_tokens tokens; one
        # full-length prompt must fit (TensorRT-LLM clamps it otherwise, with a warning).
        if self.max_num_tokens < self.max_input_len:
            raise PlanError(
                f"max_num_tokens ({self.max_num_tokens}) must be >= max_input_len "
                f"({self.max_input_len})"
            )
        _check_lora(self.max_lora_rank, self.lora_target_modules)
        if not sku.is_gpu and (self.tp, self.pp) != (1, 1):
            raise PlanError(
                f"tp/pp: the CPU reference engine runs on one process, got "
                f"tp={self.tp} pp={self.pp}"
            )

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoint"

    @property
    def fake_quant_dir(self) -> Path:
        """`--sku cpu` with a quantized precision: the ModelOpt fake-quant state to serve."""
        return self.output_dir / "fake_quant"

    @property
    def is_cpu_fake_quant(self) -> bool:
        return not get_sku(self.sku).is_gpu and self.precision != "fp32"

    @property
    def engine_dir(self) -> Path:
        return self.output_dir / "engine"

    @property
    def quality_report(self) -> Path:
        return self.checkpoint_dir / "quality.json"

    @property
    def plan_file(self) -> Path:
        return self.output_dir / PLAN_FILE

    @property
    def timing_cache(self) -> Path:
        return self.output_dir / "timing.cache"

    def to_dict(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BuildPlan:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PlanError(f"unknown plan fields: {', '.join(sorted(unknown))}")
        paths = {"model_dir", "output_dir", "model_repo", "calib_path", "heldout_path"}
        kwargs = {k: (Path(v) if k in paths and v is not None else v) for k, v in data.items()}
        if isinstance(kwargs.get("lora_target_modules"), list):  # JSON has no tuples
            kwargs["lora_target_modules"] = tuple(kwargs["lora_target_modules"])  # type: ignore[arg-type]
        plan = cls(**kwargs)  # type: ignore[arg-type]
        plan.validate()
        return plan

    def with_(self, **changes: object) -> BuildPlan:
        return replace(self, **changes)  # type: ignore[arg-type]


def trtllm_build_argv(plan: BuildPlan) -> tuple[str, ...]:
    """The exact `trtllm-build` command line for this plan (TensorRT-LLM 1.2.x flags)."""
    argv = [
        "trtllm-build",
        "--checkpoint_dir", str(plan.checkpoint_dir),
        "--output_dir", str(plan.engine_dir),
        "--gemm_plugin", "auto",
        "--gpt_attention_plugin", "auto",
        "--kv_cache_type", "paged",
        # Paged context FMHA: needed by KV cache reuse and chunked context (plugin.py's help),
        # both of which the tensorrt_llm Triton model can enable.
        "--use_paged_context_fmha", "enable",
        "--remove_input_padding", "enable",
    ]  # fmt: skip
    if plan.precision == "fp8":
        # FP8 context FMHA: only meaningful with FP8 quantization (plugin.py's help text).
        argv += ["--use_fp8_context_fmha", "enable"]
    if plan.profile == "throughput":
        # Several TensorRT optimization profiles: better kernels across batch sizes, at the cost
        # of a longer build (plugin.py's `multiple_profiles` help).
        argv += ["--multiple_profiles", "enable"]
    argv += [
        "--max_batch_size", str(plan.max_batch),
        "--max_input_len", str(plan.max_input_len),
        "--max_seq_len", str(plan.max_seq_len),
        "--max_num_tokens", str(plan.max_num_tokens),
        "--max_beam_width", "1",
        # One build process per rank (build.py caps it at torch.cuda.device_count()).
        "--workers", str(plan.world_size),
        # Read if present, written after: rebuilds of the same SKU reuse tactic timings.
        "--input_timing_cache", str(plan.timing_cache),
        "--output_timing_cache", str(plan.timing_cache),
        "--log_level", "info",
    ]  # fmt: skip
    if plan.max_lora_rank:
        # The LoRA plugin in the checkpoint's dtype; the rank sizes its workspace (build.py).
        argv += ["--lora_plugin", "auto", "--max_lora_rank", str(plan.max_lora_rank)]
        argv += ["--lora_target_modules", *plan.lora_target_modules]
    return tuple(argv)


def _check_lora(rank: object, modules: object) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise PlanError(f"max_lora_rank: {rank!r} must be an integer >= 0 (0 = no LoRA)")
    if not isinstance(modules, tuple) or len(set(modules)) != len(modules):
        raise PlanError(f"lora_target_modules: {modules!r} must be distinct module names")
    if bool(rank) != bool(modules):
        raise PlanError(
            f"lora_target_modules: {list(modules)} with max_lora_rank {rank}: give both or neither"
        )
    for module in modules:
        if module not in lc.MODULE_IDS:
            raise PlanError(
                f"lora_target_modules: {module!r} is not one of {', '.join(lc.MODULE_IDS)}"
            )


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    argv: tuple[str, ...]
    gpu_only: bool = False
    note: str = ""


def steps(plan: BuildPlan, *, python: str = sys.executable) -> tuple[Step, ...]:
    """The ordered build steps with their exact command lines (validates the plan)."""
    plan.validate()
    entry = (python, *ENTRY)
    plan_arg = ("--plan", str(plan.plan_file))
    out: list[Step] = []
    sku = get_sku(plan.sku)
    if plan.is_cpu_fake_quant:
        out.append(
            Step(
                "quantize",
                (*entry, "quantize", *plan_arg),
                note=f"ModelOpt PTQ → fake-quant state ({plan.fake_quant_dir.name}/) for the CPU "
                "reference engine, and quality measurements",
            )
        )
    elif sku.is_gpu:
        what = "convert" if plan.precision in GPU_BASE_PRECISIONS else "ModelOpt PTQ"
        out.append(
            Step(
                "quantize",
                (*entry, "quantize", *plan_arg),
                note=f"{what} → TensorRT-LLM checkpoint (config.json + rank*.safetensors, "
                f"{plan.world_size} rank(s): tp={plan.tp} x pp={plan.pp}) and quality "
                "measurements",
            )
        )
    if sku.is_gpu or plan.is_cpu_fake_quant:
        out.append(
            Step(
                "quality",
                (*entry, "quality", *plan_arg),
                note="fail the build when the perplexity ratio or token agreement is crossed",
            )
        )
    if sku.is_gpu:
        out.append(
            Step(
                "compile",
                trtllm_build_argv(plan),
                gpu_only=True,
                note=f"run by `{' '.join(ENTRY)} compile --plan …`: refuses without a GPU of "
                f"compute capability {sku.cc_string}, records versions in manifest.json",
            )
        )
    if plan.model_repo is not None:
        out.append(
            Step(
                "install",
                (*entry, "install", *plan_arg),
                note=f"new numbered version of {plan.model_name!r} in {plan.model_repo}",
            )
        )
    return tuple(out)


def save(plan: BuildPlan) -> Path:
    """Write plan.json into the output dir (validated first)."""
    plan.validate()
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    tmp = plan.plan_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(plan.plan_file)
    return plan.plan_file


def load(path: Path) -> BuildPlan:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"cannot read plan {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: not a JSON object")
    return BuildPlan.from_dict(data)
