"""scripts/gpu-acceptance.sh --model autoglm-phone-9b, checked on a CPU host: its arguments, the
commands its dry run prints, the Python it feeds on stdin, and the screenshot it sends."""

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
    dry = run("--dry-run")
    assert dry.returncode == 2 and "--dry-run needs --model autoglm-phone-9b" in dry.stderr
    missing = run("--model", "autoglm-phone-9b", "--dry-run")
    assert missing.returncode == 2 and "MODEL_DIR" in missing.stderr
    assert run("--help").returncode == 0


def test_python_steps_compile() -> None:
    blocks = re.findall(r"<<'PY'\n(.*?)\nPY\n", VLLM.read_text(), flags=re.S)
    assert len(blocks) == 6  # versions, pins, SKU, model.json, Triton ready, façade ready
    for block in blocks:
        compile(block, str(VLLM), "exec")


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
