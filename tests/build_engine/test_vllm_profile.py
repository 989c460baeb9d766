"""The vLLM build profile of AutoGLM-Phone-9B per SKU: precision, memory fit, refusals with the
numbers, the checkpoint's sha256 check and the installed version's manifest (on paper: no GPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.checkpoint import (
    CheckpointError,
    checkpoint_files,
    compare,
    hash_checkpoint,
    parse_sha256sum,
    read_expected,
    safetensors_shapes,
)
from autoglm.build_engine.cli import main
from autoglm.build_engine.glm41v_shape import Glm4vShape, ParamCounts
from autoglm.build_engine.skus import SKUS, get_sku
from autoglm.build_engine.vllm_install import (
    check_checkpoint,
    install_vllm_version,
    load_profile,
)
from autoglm.build_engine.vllm_profile import (
    SKU_SETTINGS,
    FitRequest,
    VllmProfileError,
    memory_fit,
    plan_profile,
)
from autoglm.triton_models.render import parse_model_config
from autoglm.triton_models.vllm import ENGINE_ARGS_FILE, contract_mismatches

SHAPE = Glm4vShape()
PARAMS = ParamCounts.from_shape(SHAPE)
CONFIG = {
    "architectures": ["Glm4vForConditionalGeneration"],
    "text_config": {"max_position_embeddings": 65_536, "num_hidden_layers": 40},
    "vision_config": {"depth": 24},
}


def plan(sku: str, **kw: object):  # type: ignore[no-untyped-def]
    return plan_profile(
        sku_name=sku,
        model_dir=kw.pop("model_dir", Path("/models/AutoGLM-Phone-9B")),  # type: ignore[arg-type]
        shape=kw.pop("shape", SHAPE),  # type: ignore[arg-type]
        params=PARAMS,
        **kw,  # type: ignore[arg-type]
    )


# ---- the model's arithmetic ----------------------------------------------------------------


def test_param_count_is_glm_4_1v_9b() -> None:
    # transformers 5.14: Glm4vForConditionalGeneration(Glm4vConfig()) on the meta device.
    assert PARAMS.total == 10_292_777_472
    assert PARAMS.language_linear == 8_157_921_280
    assert PARAMS.vision_linear == 864_550_912
    assert PARAMS.weight_bytes("bf16") == 2 * PARAMS.total
    # FP8 halves every linear weight, vision included (vLLM's online FP8 ignores no layer).
    linear = PARAMS.language_linear + PARAMS.vision_linear
    assert PARAMS.weight_bytes("fp8") == 2 * PARAMS.total - linear


def test_kv_cache_is_about_40_kb_a_token() -> None:
    assert SHAPE.kv_bytes_per_token(tp=1, kv_bytes=2) == 40 * 2 * 2 * 128 * 2 == 40_960
    assert SHAPE.kv_bytes_per_token(tp=2, kv_bytes=2) == 20_480
    # 2 KV heads over 4 GPUs: vLLM replicates, one head each.
    assert SHAPE.kv_bytes_per_token(tp=4, kv_bytes=2) == 20_480
    assert SHAPE.kv_bytes_per_token(tp=1, kv_bytes=1) == 20_480
    assert 25_480 * 40_960 < 1.1e9  # a full context is ~1 GB (facts.md)


def test_largest_image_tokens() -> None:
    assert SHAPE.image_tokens(5_000_000) == 6_377


def test_shape_from_config_reads_nested_sections() -> None:
    shape = Glm4vShape.from_config(
        {"text_config": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}}
    )
    assert (shape.num_layers, shape.hidden_size, shape.head_dim) == (2, 64, 16)
    assert shape.vision_depth == SHAPE.vision_depth


def test_params_from_safetensors_names() -> None:
    counts = ParamCounts.from_headers(
        {
            "model.language_model.embed_tokens.weight": (10, 4),
            "lm_head.weight": (10, 4),
            "model.language_model.layers.0.self_attn.q_proj.weight": (4, 4),
            "model.language_model.layers.0.self_attn.q_proj.bias": (4,),
            "model.visual.blocks.0.attn.qkv.weight": (6, 2),
            "model.visual.embeddings.position_embedding.weight": (3, 2),
            "model.visual.patch_embed.proj.weight": (2, 3, 2, 1, 1),
        }
    )
    assert counts == ParamCounts(
        language_linear=16, language_other=84, vision_linear=12, vision_other=18
    )


# ---- every SKU -------------------------------------------------------------------------------


@pytest.mark.parametrize("sku", sorted(SKUS))
def test_every_sku_gets_a_profile_or_a_clear_refusal(sku: str, ckpt: Path) -> None:
    if not get_sku(sku).is_gpu:
        with pytest.raises(VllmProfileError, match="the vLLM profile is for GPUs"):
            plan(sku)
        return
    profile = plan(sku, model_dir=ckpt)
    assert profile.fit.ok
    cc = get_sku(sku).compute_capability
    assert cc is not None
    want = "fp8" if cc >= (8, 9) else "bf16"
    assert profile.precision == want
    args = profile.engine.engine_args()
    assert args.get("quantization") == ("fp8" if want == "fp8" else None)
    assert args["tensor_parallel_size"] == SKU_SETTINGS[sku].tp
    assert args["max_num_seqs"] == SKU_SETTINGS[sku].max_num_seqs
    assert args["max_model_len"] == 25_480


def test_every_gpu_sku_has_settings() -> None:
    assert set(SKU_SETTINGS) == {n for n, s in SKUS.items() if s.is_gpu}


@pytest.mark.parametrize("sku", ["a100-40gb", "a100-80gb"])
def test_a100_is_bf16_and_refuses_fp8(sku: str) -> None:
    assert plan(sku).precision == "bf16"
    with pytest.raises(VllmProfileError, match="weight-only FP8"):
        plan(sku, precision="fp8")
    with pytest.raises(VllmProfileError, match="kv cache dtype 'fp8'"):
        plan(sku, kv_cache_dtype="fp8")


def test_context_too_large_for_l4_is_refused_with_numbers() -> None:
    long = dataclasses.replace(SHAPE, max_position_embeddings=65_536)
    with pytest.raises(VllmProfileError) as info:
        plan("l4", shape=long, max_model_len=65_536)
    message = str(info.value)
    assert "does not fit one l4" in message
    assert "KV cache 10.00 GiB (4 seqs x 65536 tokens x 40.0 KiB)" in message
    assert "weights 10.77 GiB (fp8)" in message
    assert "budget 20.09 GiB" in message
    # The knobs it names really fit.
    seqs = int(message.split("--max-num-seqs ")[1].split()[0])
    length = int(message.split("--max-model-len ")[1].split()[0])
    assert plan("l4", shape=long, max_model_len=65_536, max_num_seqs=seqs).fit.ok
    assert plan("l4", shape=long, max_model_len=length).fit.ok
    assert plan("l4", shape=long, max_model_len=65_536, tp=2).fit.ok


def test_a10g_on_one_gpu_is_refused_and_says_tp() -> None:
    with pytest.raises(VllmProfileError, match=r"the weights and buffers alone.*--tp 2"):
        plan("a10g", tp=1)


def test_measured_gpu_memory_is_used() -> None:
    small = plan("l4", gpu_memory_bytes=23_034 * 2**20)  # nvidia-smi on an L4
    assert small.fit.gpu_total == 23_034 * 2**20
    with pytest.raises(VllmProfileError, match="does not fit"):
        plan("l4", gpu_memory_bytes=16 * 2**30)


@pytest.mark.parametrize("tp", [3, 8])
def test_tp_must_divide_the_heads(tp: int) -> None:
    with pytest.raises(VllmProfileError, match=f"tp: {tp} does not divide"):
        plan("h100-sxm", tp=tp)


def test_context_beyond_the_model_is_refused() -> None:
    with pytest.raises(VllmProfileError, match="exceeds the model's max_position_embeddings"):
        plan("h200", max_model_len=40_000)  # Glm4vConfig() default: 32,768


def test_fit_grows_with_each_knob() -> None:
    base = FitRequest("h100-sxm", "fp8", "auto", 1, 25_480, 8, 8192, 0.9)
    fit = memory_fit(SHAPE, PARAMS, base)
    more = memory_fit(SHAPE, PARAMS, dataclasses.replace(base, max_num_seqs=16))
    assert more.kv_cache == 2 * fit.kv_cache
    eager = memory_fit(SHAPE, PARAMS, dataclasses.replace(base, enforce_eager=True))
    assert eager.runtime < fit.runtime
    fp8_kv = memory_fit(SHAPE, PARAMS, dataclasses.replace(base, kv_cache_dtype="fp8"))
    assert fp8_kv.kv_cache * 2 == fit.kv_cache


# ---- the checkpoint ------------------------------------------------------------------------


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    d = tmp_path / "AutoGLM-Phone-9B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "tokenizer.json").write_text("{}")
    save_file(
        {
            "model.language_model.layers.0.mlp.down_proj.weight": np.zeros((4, 2), np.float16),
            "model.visual.blocks.0.attn.qkv.weight": np.zeros((6, 2), np.float16),
        },
        str(d / "model-00001-of-00001.safetensors"),
    )
    (d / ".cache" / "huggingface").mkdir(parents=True)
    (d / ".cache" / "huggingface" / "x.metadata").write_text("download noise")
    return d


def test_checkpoint_files_skip_dot_folders(ckpt: Path) -> None:
    assert checkpoint_files(ckpt) == [
        "config.json",
        "model-00001-of-00001.safetensors",
        "tokenizer.json",
    ]
    assert safetensors_shapes(ckpt / "model-00001-of-00001.safetensors") == {
        "model.language_model.layers.0.mlp.down_proj.weight": (4, 2),
        "model.visual.blocks.0.attn.qkv.weight": (6, 2),
    }


def test_sha256sum_format() -> None:
    digest = "a" * 64
    text = f"# published\n{digest}  ./config.json\n{'B' * 64} *model.safetensors\n"
    assert parse_sha256sum(text, source="SUMS") == {
        "config.json": digest,
        "model.safetensors": "b" * 64,
    }
    with pytest.raises(CheckpointError, match="SUMS:1: not '<sha256>  <path>'"):
        parse_sha256sum("nonsense\n", source="SUMS")
    with pytest.raises(CheckpointError, match="leaves the checkpoint"):
        parse_sha256sum(f"{digest}  ../etc/passwd\n", source="SUMS")


def test_compare_names_every_difference() -> None:
    problems = compare({"a": "1" * 64, "b": "2" * 64}, {"a": "3" * 64, "c": "4" * 64})
    assert problems == [
        "checksum mismatch a: expected 111111111111…, got 333333333333…",
        "missing b",
        "unexpected file c",
    ]


def test_checkpoint_against_a_sha256sum_file(ckpt: Path, tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(f"{d}  {rel}\n" for rel, d in hash_checkpoint(ckpt).items()))
    record = check_checkpoint(ckpt, sha256_file=sums, model_root=tmp_path / "repo" / "m")
    assert record.verified_against == str(sums)
    (ckpt / "model-00001-of-00001.safetensors").write_bytes(b"swapped")
    with pytest.raises(CheckpointError, match="checksum mismatch model-00001-of-00001"):
        check_checkpoint(ckpt, sha256_file=sums, model_root=tmp_path / "repo" / "m")


def test_install_then_verify_against_its_manifest(ckpt: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    profile = load_profile(ckpt, sku_name="l4")
    first = check_checkpoint(ckpt, sha256_file=None, model_root=repo / "autoglm-phone-9b")
    assert first.verified_against == "recorded"
    done = install_vllm_version(profile, repo, first, versions={"vllm": "0.19.0"})
    assert done.version == 1
    m = mf.verify(done.version_dir)
    assert m.profile.engine == "vllm" and m.profile.engine_kind == "vllm"
    assert (m.profile.sku, m.profile.precision, m.profile.compute_capability) == (
        "l4",
        "fp8",
        "8.9",
    )
    assert m.profile.max_batch == 4 and m.profile.max_seq_len == 25_480
    assert m.extra["checkpoint"]["files"] == first.files  # type: ignore[index]
    assert m.extra["engine_args"]["quantization"] == "fp8"  # type: ignore[index]
    assert {ENGINE_ARGS_FILE, mf.VERSION_CONFIG, "config.json", "tokenizer.json"} <= set(m.files)
    served = parse_model_config((repo / "autoglm-phone-9b" / "config.pbtxt").read_text())
    assert contract_mismatches(served) == []
    # The next install verifies the checkpoint against this manifest.
    again = check_checkpoint(ckpt, sha256_file=None, model_root=repo / "autoglm-phone-9b")
    assert again.verified_against == str(done.version_dir / mf.MANIFEST)
    assert read_expected(done.version_dir / mf.MANIFEST) == first.files
    (ckpt / "extra.bin").write_bytes(b"a pickle")
    with pytest.raises(CheckpointError, match=r"unexpected file extra\.bin"):
        check_checkpoint(ckpt, sha256_file=None, model_root=repo / "autoglm-phone-9b")


def test_profile_ids_of_older_manifests_do_not_change() -> None:
    # The fields every manifest has; those with a default (engine, the LoRA build) came later.
    fields = {f.name: 1 for f in dataclasses.fields(mf.Profile) if f.default is dataclasses.MISSING}
    legacy = mf.Profile(**{**fields, "model": "m", "sku": "l4"})  # type: ignore[arg-type]
    assert "engine" not in legacy.to_dict()
    assert legacy.engine_kind == "tensorrt_llm"
    vllm = dataclasses.replace(legacy, engine="vllm")
    assert vllm.id != legacy.id and vllm.to_dict()["engine"] == "vllm"


# ---- the command ---------------------------------------------------------------------------


def test_cli_dry_run_and_install(ckpt: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    base = ["vllm-profile", "--model-dir", str(ckpt), "--sku", "h100-sxm", "--out", str(repo)]
    assert main([*base, "--dry-run"]) == 0
    assert not repo.exists()
    assert main([*base, "--engine-arg", 'allowed_media_domains=["x"]', "--dry-run"]) == 2
    assert main([*base, "--engine-arg", "block_size=32"]) == 0
    version = repo / "autoglm-phone-9b" / "1"
    assert json.loads((version / ENGINE_ARGS_FILE).read_text())["block_size"] == 32
    assert main(base) == 0  # verified against version 1's manifest
    (ckpt / "tokenizer.json").write_text('{"changed": true}')
    assert main(base) == 2
    assert not (repo / "autoglm-phone-9b" / "3").exists()


def test_cli_refuses_another_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    argv = ["vllm-profile", "--model-dir", str(tmp_path), "--sku", "l4", "--out", str(tmp_path)]
    assert main([*argv, "--dry-run"]) == 2
