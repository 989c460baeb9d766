"""CPU fake-quant: the build saves ModelOpt's state, install checksums it, the runner restores it.

One fp8 (+ fp8 KV) PTQ of the real SmolLM2 per session (fake_quant_build.py). The restored
runner must reproduce the build's own quality measurement exactly (so it is the model the gate
judged), differ from the fp32 model, and still predict mostly the same tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.install import InstallError, install
from autoglm.build_engine.quality import QualityThresholds, judge, score
from autoglm.build_engine.quantize import QuantizeError, quantize
from autoglm.build_engine.texts import DEFAULT_HELDOUT, load_texts, token_chunks
from autoglm.triton_models.cpu_engine import fake_quant
from autoglm.triton_models.cpu_engine.runner import CausalLMRunner

from .fake_quant_build import SETTINGS, FakeQuantBuild, fp8_build

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> FakeQuantBuild:
    return fp8_build(tmp_path_factory, model_dir)


@pytest.fixture(scope="module")
def fp32(model_dir: Path) -> CausalLMRunner:
    return CausalLMRunner(model_dir)


@pytest.fixture(scope="module")
def fp8(model_dir: Path, build: FakeQuantBuild) -> CausalLMRunner:
    return CausalLMRunner(model_dir, precision="fp8", fake_quant_dir=build.plan.fake_quant_dir)


def test_build_saves_fake_quant_state(build: FakeQuantBuild) -> None:
    out = build.plan.fake_quant_dir
    assert build.result.checkpoint_dir == out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [fake_quant.STATE_FILE, fake_quant.TENSORS_FILE, fake_quant.INFO_FILE]
    )
    info = fake_quant.FakeQuantInfo.read(out)
    assert (info.precision, info.kv_cache_dtype) == ("fp8", "fp8")
    # 30 layers x 7 linears x (input + weight amax) + 30 x (K + V bmm amax); no weights copied.
    assert info.entries == 30 * 7 * 2 + 30 * 2
    assert (out / fake_quant.TENSORS_FILE).stat().st_size < 1_000_000
    assert not (build.plan.checkpoint_dir / "rank0.safetensors").exists()  # no TRT-LLM export
    q = build.quality
    print(
        f"cpu fp8 fake-quant: ppl {q.base_ppl:.3f}->{q.quant_ppl:.3f} ratio {q.ppl_ratio:.4f} "
        f"agreement {q.token_agreement:.2%} over {q.tokens} tokens"
    )
    assert q.passed, q.reasons


def test_restored_runner_is_the_model_the_gate_judged(
    model_dir: Path, build: FakeQuantBuild, fp32: CausalLMRunner, fp8: CausalLMRunner
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # as quantize() encodes
    chunks = token_chunks(
        lambda t: tokenizer.encode(t, add_special_tokens=False),
        load_texts(DEFAULT_HELDOUT),
        chunk_len=SETTINGS.eval_len,
        max_chunks=SETTINGS.eval_chunks,
    )
    again = judge("fp8", score(fp32.model, chunks), score(fp8.model, chunks), QualityThresholds())
    # Same rounded perplexities and agreement as quantize() measured on its in-memory model
    # (both at one torch thread: fake_quant_build.py).
    assert again == build.result.quality


def test_fake_quant_differs_from_fp32_but_stays_close(
    model_dir: Path, fp32: CausalLMRunner, fp8: CausalLMRunner
) -> None:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = torch.tensor([tokenizer.encode(PROMPT).ids])  # [1, T]
    with torch.inference_mode():
        base = fp32.model(input_ids=ids).logits[0].float()  # [T, vocab]
        quant = fp8.model(input_ids=ids).logits[0].float()
    diff = (base - quant).abs().max().item()
    agreement = (base.argmax(-1) == quant.argmax(-1)).float().mean().item()
    print(f"fp8 vs fp32 on {PROMPT!r}: max |Δlogit| {diff:.3f}, argmax agreement {agreement:.0%}")
    assert diff > 0.01  # the quantizers are really active
    assert agreement >= 0.6
    paris = tokenizer.encode(" Paris").ids[0]
    assert int(base[-1].argmax()) == int(quant[-1].argmax()) == paris


def test_restore_refuses_another_precision(model_dir: Path, build: FakeQuantBuild) -> None:
    wrong = r"holds a 'fp8' .* the version is 'int8_wo'"
    with pytest.raises(fake_quant.FakeQuantError, match=wrong):
        CausalLMRunner(model_dir, precision="int8_wo", fake_quant_dir=build.plan.fake_quant_dir)
    with pytest.raises(fake_quant.FakeQuantError, match=r"needs its fake-quant directory"):
        CausalLMRunner(model_dir, precision="fp8")


def test_install_records_precision_and_checksums(build: FakeQuantBuild) -> None:
    plan = build.plan
    with pytest.raises(InstallError, match=r"needs the quality gate's result"):
        install(plan)
    done = install(plan, quality=build.quality)
    m = mf.verify(done.version_dir)
    assert (m.profile.sku, m.profile.precision, m.profile.kv_cache_dtype) == ("cpu", "fp8", "fp8")
    assert m.extra["fake_quant"]["precision"] == "fp8"  # type: ignore[index]
    assert m.quality is not None and m.quality["passed"] is True
    for name in (fake_quant.STATE_FILE, fake_quant.TENSORS_FILE, fake_quant.INFO_FILE):
        assert f"fake_quant/{name}" in m.files
    config = (done.version_dir / mf.VERSION_CONFIG).read_text()
    assert 'string_value: "fp8"' in config
    assert f'string_value: "{done.version_dir.resolve() / "fake_quant"}"' in config
    # A changed quantizer file is caught by the serving side's check before Triton loads it.
    tensors = done.version_dir / "fake_quant" / fake_quant.TENSORS_FILE
    tensors.write_bytes(tensors.read_bytes()[:-1] + b"\0")
    with pytest.raises(mf.ManifestError, match=r"checksum mismatch fake_quant/quantizers"):
        mf.verify(done.version_dir)
    shutil.rmtree(done.version_dir)


def test_install_refuses_state_of_another_precision(build: FakeQuantBuild, tmp_path: Path) -> None:
    plan = build.plan.with_(output_dir=tmp_path / "out", precision="int8_wo", kv_cache_dtype="auto")
    shutil.copytree(build.plan.fake_quant_dir, plan.fake_quant_dir)
    with pytest.raises(InstallError, match=r"is fp8 with fp8 KV, the plan is int8_wo with auto"):
        install(plan, quality=build.quality)
    info = json.loads((plan.fake_quant_dir / fake_quant.INFO_FILE).read_text())
    assert info["precision"] == "fp8"


def test_cpu_fp32_has_nothing_to_quantize(model_dir: Path, tmp_path: Path) -> None:
    from autoglm.build_engine.plan import BuildPlan

    plan = BuildPlan(model_dir=model_dir, sku="cpu", precision="fp32", output_dir=tmp_path)
    with pytest.raises(QuantizeError, match="nothing to quantize"):
        quantize(plan, SETTINGS)
