"""`autoglm build …`: skus, plan, quantize, quality, compile, install, list-profiles, activate,
vllm-profile (AutoGLM-Phone-9B on Triton's vLLM backend: vllm_profile.py).

`add_build_commands(subparsers)` plugs the group into the main `autoglm` CLI; `main(argv)` runs
the same commands without the `build` prefix (`python -m autoglm.build_engine.cli quantize …`,
which is what plan.steps() prints). Every command sets `func(args, console) -> int`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autoglm.build_engine import manifest as mf
from autoglm.build_engine import plan as plan_mod
from autoglm.build_engine.adapter_cli import add_adapter_commands
from autoglm.build_engine.canary_fit import request_mismatch
from autoglm.build_engine.canary_records import Canary, promote_canary, remove_canary, write_canary
from autoglm.build_engine.checkpoint import CheckpointError
from autoglm.build_engine.compile import CompileError, compile_engine
from autoglm.build_engine.gpus import GpuDetectionError
from autoglm.build_engine.install import InstallError, install
from autoglm.build_engine.parallel import ModelShape, check_parallelism
from autoglm.build_engine.plan import PROFILES, BuildPlan, PlanError
from autoglm.build_engine.quality import (
    DEFAULT_MAX_PPL_RATIO,
    DEFAULT_MIN_TOKEN_AGREEMENT,
    QualityGateError,
    QualityThresholds,
    apply_thresholds,
    read_report,
    write_report,
)
from autoglm.build_engine.quantize import QuantizeError
from autoglm.build_engine.skus import (
    KV_CACHE_DTYPES,
    PRECISIONS,
    SKUS,
    SkuError,
    get_sku,
    kv_cache_dtypes_for,
)
from autoglm.build_engine.texts import TextError
from autoglm.build_engine.version_plan import (
    Candidate,
    Override,
    OverrideError,
    merge_overrides,
    parse_override,
    plan_loads,
    read_pins,
    remove_pin,
    scan_repository,
    scan_roots,
    write_pin,
)
from autoglm.build_engine.vllm_profile import PRECISIONS as VLLM_PRECISIONS
from autoglm.build_engine.vllm_profile import VllmProfileError
from autoglm.triton_models.render import TemplateError
from autoglm.triton_models.vllm import EngineArgsError

# Limits per profile when not given (our defaults): latency keeps batches small so a request
# never waits behind a long context; throughput lets in-flight batching fill the GPU.
PROFILE_LIMITS: dict[str, dict[str, int]] = {
    "latency": {"max_batch": 8, "max_num_tokens": 4096},
    "throughput": {"max_batch": 64, "max_num_tokens": 8192},
}
# Errors that are the user's to fix: message only, no traceback.
USER_ERRORS = (
    PlanError,
    SkuError,
    CompileError,
    InstallError,
    mf.ManifestError,
    TextError,
    GpuDetectionError,
    QuantizeError,
    OverrideError,
    VllmProfileError,
    CheckpointError,
    EngineArgsError,
    TemplateError,  # e.g. tritonclient missing where a config is validated
)


def add_build_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `build` group to the main CLI's subparsers."""
    build = subparsers.add_parser("build", help="build, check and install engines per GPU SKU")
    _add_subcommands(build.add_subparsers(dest="build_command", required=True))


def _add_subcommands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("skus", help="list the SKU catalogue")
    p.set_defaults(func=cmd_skus)

    p = sub.add_parser("plan", help="validate a build and write OUTPUT/plan.json")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--sku", required=True, choices=sorted(SKUS))
    p.add_argument("--precision", required=True, choices=PRECISIONS)
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--profile", default="latency", choices=PROFILES)
    p.add_argument("--max-batch", type=int)
    p.add_argument("--max-input-len", type=int, default=1024)
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--max-num-tokens", type=int)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--model-repo", type=Path, help="Triton model repository to install into")
    p.add_argument("--model-name", default=None, help="default: tensorrt_llm (GPU) / SKU name")
    p.add_argument("--calib", type=Path, help="local calibration .txt file or folder")
    p.add_argument("--heldout", type=Path, help="local held-out .txt file or folder")
    p.add_argument(
        "--max-lora-rank",
        type=int,
        default=0,
        help="build with the LoRA plugin for adapters up to this rank (0: no LoRA)",
    )
    p.add_argument(
        "--lora-target-modules",
        nargs="+",
        default=[],
        help="TensorRT-LLM modules adapters may target, e.g. attn_q attn_k attn_v attn_dense",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("quantize", help="PTQ (or convert) → TensorRT-LLM checkpoint + quality")
    _plan_arg(p)
    p.add_argument("--calib-chunks", type=int, default=16)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--eval-chunks", type=int, default=8)
    p.add_argument("--eval-len", type=int, default=256)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("quality", help="fail when the quality gate thresholds are crossed")
    _plan_arg(p)
    p.add_argument("--max-ppl-ratio", type=float, default=DEFAULT_MAX_PPL_RATIO)
    p.add_argument("--min-token-agreement", type=float, default=DEFAULT_MIN_TOKEN_AGREEMENT)
    p.set_defaults(func=cmd_quality)

    p = sub.add_parser("compile", help="trtllm-build on a GPU of the plan's SKU")
    _plan_arg(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("install", help="install as a new version in the Triton model repo")
    _plan_arg(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("list-profiles", help="which installed profile this host would pick")
    p.add_argument("roots", type=Path, nargs="+", help="model dirs / version dirs / repos")
    p.add_argument(
        "--profile",
        action="append",
        default=[],
        help="as `autoglm serve --profile`: PROFILE_ID, MODEL=PROFILE_ID or MODEL@VERSION",
    )
    p.set_defaults(func=cmd_list_profiles)

    p = sub.add_parser(
        "activate",
        help="pin the version a running `autoglm serve --model-repository` serves (then SIGHUP)",
    )
    p.add_argument("model", help="model name (its folder in the repository)")
    p.add_argument("--repository", type=Path, required=True, help="the Triton model repository")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="serve this installed version")
    which.add_argument("--profile", dest="profile_id", help="serve the version of this profile")
    which.add_argument(
        "--best", action="store_true", help="remove the pin: serve the best compatible version"
    )
    which.add_argument(
        "--canary",
        type=int,
        metavar="VERSION",
        help="serve this installed version to --weight percent of the principals, beside the "
        "stable one",
    )
    which.add_argument(
        "--promote", action="store_true", help="the canary becomes the only version (pinned)"
    )
    which.add_argument(
        "--rollback", action="store_true", help="end the canary: the stable version alone"
    )
    p.add_argument(
        "--weight", type=int, metavar="PERCENT", help="with --canary: 1..99 percent of principals"
    )
    p.add_argument(
        "--signal",
        type=int,
        metavar="PID",
        help="send SIGHUP to the serving process so it switches now (else at its next reload)",
    )
    p.set_defaults(func=cmd_activate)

    _add_vllm_profile(sub)
    add_adapter_commands(sub)


def _add_vllm_profile(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "vllm-profile",
        help="AutoGLM-Phone-9B (GLM-4.1V) for Triton's vLLM backend: verify the checkpoint, "
        "check the memory fit on the SKU, install a version into a model repository",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="the HF checkpoint folder")
    p.add_argument("--sku", required=True, choices=sorted(SKUS))
    p.add_argument("--out", type=Path, required=True, help="the Triton model repository")
    p.add_argument("--tp", type=int, help="tensor parallel GPUs (default: the SKU's)")
    p.add_argument("--precision", choices=VLLM_PRECISIONS, help="default: fp8 on compute >= 8.9")
    p.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "fp8"))
    p.add_argument("--max-model-len", type=int, default=25_480)
    p.add_argument("--max-num-seqs", type=int, help="default: the SKU's")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, help="default: the SKU's")
    p.add_argument(
        "--gpu-memory-mib", type=int, help="measured memory per GPU (nvidia-smi memory.total)"
    )
    p.add_argument(
        "--sha256-file",
        type=Path,
        help="the checkpoint's checksums: sha256sum output or an earlier install's manifest.json "
        "(default: the last install's manifest; none = record)",
    )
    p.add_argument("--model-name", default="autoglm-phone-9b", help="the Triton model name")
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="an extra vLLM engine argument from the allow-list (repeatable)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check and print model.json; write nothing"
    )
    p.set_defaults(func=cmd_vllm_profile)


def _plan_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", type=Path, required=True, help="plan.json written by `plan`")


def cmd_skus(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="SKUs")
    for col in ("sku", "compute", "memory", "precisions", "kv cache"):
        table.add_column(col)
    for sku in SKUS.values():
        mem = f"{sku.memory_gb} GB" if sku.is_gpu else "-"
        precisions = ", ".join(sorted(sku.precisions))
        table.add_row(sku.name, sku.cc_string, mem, precisions, ", ".join(kv_cache_dtypes_for(sku)))
    console.print(table)
    return 0


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    limits = PROFILE_LIMITS[args.profile]
    sku = get_sku(args.sku)
    plan = BuildPlan(
        model_dir=args.model_dir.resolve(),
        sku=sku.name,
        precision=args.precision,
        kv_cache_dtype=args.kv_cache_dtype,
        tp=args.tp,
        pp=args.pp,
        max_batch=args.max_batch or limits["max_batch"],
        max_input_len=args.max_input_len,
        max_seq_len=args.max_seq_len,
        max_num_tokens=args.max_num_tokens or limits["max_num_tokens"],
        profile=args.profile,
        output_dir=args.output_dir.resolve(),
        model_repo=args.model_repo.resolve() if args.model_repo else None,
        model_name=args.model_name or ("tensorrt_llm" if sku.is_gpu else "cpu_reference"),
        calib_path=args.calib.resolve() if args.calib else None,
        heldout_path=args.heldout.resolve() if args.heldout else None,
        max_lora_rank=args.max_lora_rank,
        lora_target_modules=tuple(args.lora_target_modules),
    )
    plan.validate()
    if (plan.model_dir / "config.json").is_file():  # else quantize checks it
        check_parallelism(plan.tp, plan.pp, ModelShape.from_model_dir(plan.model_dir))
    path = plan_mod.save(plan)
    console.print(f"plan [bold]{mf.Profile.from_plan(plan).id}[/] written to {path}")
    table = Table(title="steps")
    for col in ("#", "step", "command", "note"):
        table.add_column(col, overflow="fold")
    for i, step in enumerate(plan_mod.steps(plan), 1):
        name = step.name + (" (GPU)" if step.gpu_only else "")
        table.add_row(str(i), name, " ".join(step.argv), step.note)
    console.print(table)
    return 0


def cmd_quantize(args: argparse.Namespace, console: Console) -> int:
    from autoglm.build_engine.quantize import QuantizeSettings, quantize

    plan = plan_mod.load(args.plan)
    settings = QuantizeSettings(
        calib_chunks=args.calib_chunks,
        calib_len=args.calib_len,
        eval_chunks=args.eval_chunks,
        eval_len=args.eval_len,
    )
    result = quantize(plan, settings, console=console)
    q = result.quality
    what = (
        "save fake-quant state" if plan.is_cpu_fake_quant else f"export {plan.world_size} rank(s)"
    )
    console.print(
        f"{plan.precision}: PTQ {result.ptq_seconds:.1f} s on {result.calib_chunks} chunks, "
        f"{what} {result.export_seconds:.1f} s → {result.checkpoint_dir}\n"
        f"perplexity {q.base_ppl:.3f} → {q.quant_ppl:.3f} (ratio {q.ppl_ratio:.4f}), "
        f"greedy agreement {q.token_agreement:.2%} over {q.tokens} tokens"
    )
    return 0


def cmd_quality(args: argparse.Namespace, console: Console) -> int:
    plan = plan_mod.load(args.plan)
    thresholds = QualityThresholds(args.max_ppl_ratio, args.min_token_agreement)
    result = apply_thresholds(read_report(plan.quality_report), thresholds)
    write_report(plan.quality_report, result)
    if not result.passed:
        console.print(
            f"[red]quality gate FAILED[/] for {plan.precision}: " + "; ".join(result.reasons)
        )
        return 1
    console.print(
        f"[green]quality gate passed[/] for {plan.precision}: ratio {result.ppl_ratio:.4f} "
        f"<= {thresholds.max_ppl_ratio}, agreement {result.token_agreement:.2%} "
        f">= {thresholds.min_token_agreement:.0%}"
    )
    return 0


def cmd_compile(args: argparse.Namespace, console: Console) -> int:
    plan = plan_mod.load(args.plan)
    quality = read_report(plan.quality_report)
    if not quality.passed:
        raise QualityGateError(f"quality gate did not pass: {'; '.join(quality.reasons)}")
    result = compile_engine(plan)
    manifest = mf.Manifest(
        profile=mf.Profile.from_plan(plan),
        files=mf.hash_tree(result.engine_dir),
        tensorrt_version=result.tensorrt_version,
        tensorrt_llm_version=result.tensorrt_llm_version,
        quality=quality.to_dict(),
        build_seconds=result.seconds,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        host=result.host,
        extra={"gpus": [g.name for g in result.gpus], "trtllm_build": list(result.argv)},
    )
    mf.write(result.engine_dir, manifest)
    console.print(
        f"engine {manifest.profile_id} built in {result.seconds:.0f} s → {result.engine_dir}"
    )
    return 0


def cmd_install(args: argparse.Namespace, console: Console) -> int:
    plan = plan_mod.load(args.plan)
    needs_gate = get_sku(plan.sku).is_gpu or plan.is_cpu_fake_quant
    quality = read_report(plan.quality_report) if needs_gate else None
    done = install(plan, quality=quality)
    console.print(
        f"installed {done.manifest.profile_id} as {plan.model_name} version {done.version} "
        f"→ {done.version_dir}"
    )
    return 0


def cmd_list_profiles(args: argparse.Namespace, console: Console) -> int:
    # The serving side's own decision (version_plan.py): what `autoglm serve` would load.

    hardware = mf.detect_hardware()
    overrides = [parse_override(o) for o in args.profile]
    decisions = plan_loads(scan_roots(args.roots), hardware, overrides)
    table = Table(title=f"profiles (this host: {hardware.describe()})")
    columns = ("model", "version", "profile", "sku", "precision", "kv", "tp×pp", "lora", "status")
    for col in columns:
        table.add_column(col, overflow="fold")
    for d in decisions:
        rows = [(d.chosen, "[green]selected[/]")] if d.chosen else []
        for c, status in [*rows, *d.rejected]:
            version = str(c.version) if c.version is not None else "-"
            if c.manifest is None:
                table.add_row(d.model, version, "?", "", "", "", "", "", f"[red]{status}[/]")
                continue
            p = c.manifest.profile
            table.add_row(
                d.model,
                version,
                c.manifest.profile_id,
                p.sku,
                p.precision,
                p.kv_cache_dtype,
                f"{p.tp}×{p.pp}",
                _lora_column(p),
                status,
            )
    console.print(table)
    for d in decisions:
        if d.error:
            console.print(f"[red]{d.error}[/]")
    return 0 if decisions and all(d.chosen for d in decisions) else 1


def _lora_column(p: mf.Profile) -> str:
    """What adapters a TensorRT-LLM engine takes ("r16 attn_q,attn_v"; "none": built without
    LoRA); "any" for the CPU engine, which applies any adapter of its base (PEFT); "-" for
    engines that take none (vLLM's and the vision-language ones)."""
    if p.engine_kind != "tensorrt_llm":
        return "any" if p.engine_kind == "cpu_reference" else "-"
    if not p.max_lora_rank:
        return "none"
    return f"r{p.max_lora_rank} {','.join(p.lora_target_modules)}"


def cmd_activate(args: argparse.Namespace, console: Console) -> int:
    """Write (or remove) `<repo>/<model>/pin.json` after checking this host would serve it."""
    repo: Path = args.repository
    if not (repo / args.model).is_dir():
        raise OverrideError(f"model: no model {args.model!r} in {repo}")
    if args.version is not None and args.version < 1:
        raise OverrideError(f"--version: must be >= 1, got {args.version}")
    if (args.weight is not None) != (args.canary is not None):
        raise OverrideError("--weight: give it with --canary, and only then")
    if args.canary is not None or args.promote or args.rollback:
        _activate_canary(args, repo, console)
    elif args.best:
        removed = remove_pin(repo, args.model)
        console.print(f"{args.model}: {'pin removed' if removed else 'was not pinned'}")
    else:
        pin = Override(model=args.model, version=args.version, profile_id=args.profile_id)
        # The serving side's own decision with this pin, on this host, before anything changes:
        # a version that is missing or incompatible here is refused and no pin is written.
        candidates = scan_repository(repo)
        others = [o for o in read_pins(repo) if o.model != args.model]
        decisions = plan_loads(
            candidates, mf.detect_hardware(), merge_overrides([pin], others, candidates)
        )
        decision = next((d for d in decisions if d.model == args.model), None)
        if decision is None or decision.chosen is None:
            reason = decision.error if decision else f"no version of {args.model}"
            raise OverrideError(f"{pin.describe()} cannot be served here: {reason}")
        path = write_pin(repo, pin)
        console.print(
            f"{args.model}: pinned to {decision.chosen.label} "
            f"(profile {decision.chosen.manifest.profile_id if decision.chosen.manifest else '?'})"
            f" → {path}"
        )
    if args.signal is not None:
        try:
            os.kill(args.signal, signal.SIGHUP)
        except ProcessLookupError:
            raise OverrideError(f"--signal: no process {args.signal}") from None
        console.print(f"sent SIGHUP to {args.signal}: it verifies and loads the version now")
    else:
        console.print("the server switches at its next reload: kill -HUP <pid of autoglm serve>")
    return 0


def _activate_canary(args: argparse.Namespace, repo: Path, console: Console) -> None:
    """Write, promote or remove `<repo>/<model>/canary.json` (version_plan.py)."""
    if args.promote:
        promoted = promote_canary(repo, args.model)
        console.print(f"{args.model}: version {promoted.version} promoted (pinned, canary ended)")
        return
    if args.rollback:
        removed = remove_canary(repo, args.model)
        console.print(
            f"{args.model}: canary version {removed.version} ended"
            if removed
            else f"{args.model}: had no canary"
        )
        return
    canary = Canary(args.model, args.canary, args.weight)
    canary.validate()
    # The serving side's own decisions on this host, before anything changes: that version
    # can be served, and requests prepared for the stable version suit it (canary_fit.py).
    candidates = scan_repository(repo)
    hardware = mf.detect_hardware()

    def chosen(overrides: list[Override]) -> tuple[Candidate | None, str]:
        for d in plan_loads(candidates, hardware, overrides):
            if d.model == args.model:
                return d.chosen, d.error or ""
        return None, f"no version of {args.model}"

    version, reason = chosen([Override(args.model, version=args.canary)])
    if version is None or version.manifest is None:
        raise OverrideError(f"--canary {args.canary} cannot be served here: {reason}")
    stable, _ = chosen(merge_overrides([], read_pins(repo), candidates))
    if stable is not None and stable.manifest is not None:
        if stable.version == args.canary:
            raise OverrideError(f"--canary {args.canary}: that is the version served now")
        why = request_mismatch(stable.manifest, version.manifest)
        if why is not None:
            raise OverrideError(
                f"--canary {args.canary} cannot run beside version {stable.version}: {why}"
            )
    path = write_canary(repo, canary)
    console.print(
        f"{args.model}: version {args.canary} as a canary for {args.weight}% of principals → {path}"
    )


def _engine_arg(item: str) -> tuple[str, object]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise EngineArgsError(f"--engine-arg: {item!r} is not KEY=JSON")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw  # a bare string


def cmd_vllm_profile(args: argparse.Namespace, console: Console) -> int:
    from autoglm.build_engine.vllm_install import (
        check_checkpoint,
        install_vllm_version,
        load_profile,
        runtime_versions,
    )

    extra = dict(_engine_arg(a) for a in args.engine_arg)
    profile = load_profile(
        args.model_dir.resolve(),
        sku_name=args.sku,
        tp=args.tp,
        precision=args.precision,
        kv_cache_dtype=args.kv_cache_dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        gpu_memory_bytes=args.gpu_memory_mib * 2**20 if args.gpu_memory_mib else None,
        model_name=args.model_name,
        extra=extra,
    )
    engine_args = profile.engine.engine_args()  # refused options fail before any hashing
    gib = profile.fit.to_dict()["gib"]
    table = Table(title=f"{profile.engine.model_name} on {profile.sku.name} (per GPU, GiB)")
    for col in ("precision", "tp", "seqs", "weights", "kv cache", "act+vision", "runtime"):
        table.add_column(col)
    table.add_column("need / budget")
    table.add_row(
        profile.precision,
        str(profile.engine.tensor_parallel_size),
        str(profile.engine.max_num_seqs),
        str(gib["weights"]),
        str(gib["kv_cache"]),
        str(round(gib["activations"] + gib["vision"], 2)),
        str(gib["runtime"]),
        f"{gib['need']} / {gib['budget']}",
    )
    console.print(table)
    if args.dry_run:
        console.print(json.dumps(engine_args, indent=2, sort_keys=True), markup=False)
        return 0
    repo = args.out.resolve()
    record = check_checkpoint(
        profile.engine.model_dir,
        sha256_file=args.sha256_file,
        model_root=repo / profile.engine.model_name,
    )
    if record.verified_against == "recorded":
        console.print(
            f"[yellow]checkpoint recorded, not verified[/]: {len(record.files)} files hashed; "
            "no --sha256-file and no earlier install to compare with"
        )
    else:
        console.print(
            f"checkpoint verified: {len(record.files)} files match {record.verified_against}"
        )
    done = install_vllm_version(profile, repo, record, versions=runtime_versions())
    console.print(
        f"installed {done.manifest.profile_id} as {profile.engine.model_name} version "
        f"{done.version} → {done.version_dir}"
    )
    return 0


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run a parsed command, printing user errors without a traceback."""
    console = console or Console()
    try:
        return int(args.func(args, console))
    except QualityGateError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    except USER_ERRORS as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoglm build", description=__doc__)
    _add_subcommands(parser.add_subparsers(dest="build_command", required=True))
    return run(parser.parse_args(argv), console)


if __name__ == "__main__":
    sys.exit(main())
