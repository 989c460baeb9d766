"""Render a Triton model repository for the CPU reference engines (text: TensorRT-LLM's tensors;
vision-language: the vLLM backend's).

The layout Triton expects: `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<version>/model.py`.
Configs are rendered strictly and validated (render.py); the model code is copied, not linked,
so a running Triton never sees a half-updated file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoglm.triton_models.render import (
    TEMPLATES,
    check_config_string,
    check_model_name,
    render_config,
)

if TYPE_CHECKING:  # imported where a config is validated (render.config_proto)
    from tritonclient.grpc import model_config_pb2


@dataclass(frozen=True, slots=True)
class CpuEngineConfig:
    """Everything the CPU reference engine's config.pbtxt needs."""

    model_name: str
    hf_model_dir: Path
    instance_count: int = 1
    max_concurrency: int = 4
    torch_threads: int = 1
    max_batch_size: int = 8
    version: int = 1
    # fp32, or a ModelOpt fake-quant precision restored from fake_quant_dir (absolute path of the
    # version's `fake_quant/` folder; it may not exist yet while a version is being staged).
    precision: str = "fp32"
    fake_quant_dir: Path | None = None
    # The longest prompt the engine takes, as a TensorRT-LLM build's max_input_len (the
    # version's manifest); None = no limit but the model's.
    max_input_len: int | None = None
    # LoRA adapters kept by task id, least recently used evicted first (cpu_engine/lora.py's
    # DEFAULT_CACHE_SIZE); the tensorrtllm backend sizes its cache in bytes instead.
    lora_cache_size: int = 8

    def validate(self) -> None:
        check_model_name(self.model_name)
        check_config_string("hf_model_dir", str(self.hf_model_dir))
        if self.max_input_len is not None and self.max_input_len < 1:
            raise ValueError(f"max_input_len: must be >= 1 or None, got {self.max_input_len}")
        for name in (
            "instance_count",
            "max_concurrency",
            "torch_threads",
            "max_batch_size",
            "version",
            "lora_cache_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if (self.precision == "fp32") != (self.fake_quant_dir is None):
            raise ValueError(
                f"fake_quant_dir: precision {self.precision!r} needs a fake-quant directory "
                "exactly when it is not fp32"
            )
        check_config_string("precision", self.precision)
        if self.fake_quant_dir is not None:
            check_config_string("fake_quant_dir", str(self.fake_quant_dir))
        if not (self.hf_model_dir / "config.json").is_file():
            raise ValueError(f"hf_model_dir: {self.hf_model_dir} holds no config.json")


def render_cpu_model(repo: Path, cfg: CpuEngineConfig) -> model_config_pb2.ModelConfig:
    """Write `<repo>/<model_name>/` for the CPU reference engine; returns the parsed config."""
    cfg.validate()
    src = TEMPLATES / "cpu_reference"
    text, parsed = render_config(
        src / "config.pbtxt",
        {
            "model_name": cfg.model_name,
            "max_batch_size": cfg.max_batch_size,
            "instance_count": cfg.instance_count,
            "hf_model_dir": cfg.hf_model_dir.resolve(),
            "max_concurrency": cfg.max_concurrency,
            "torch_threads": cfg.torch_threads,
            "precision": cfg.precision,
            "fake_quant_dir": cfg.fake_quant_dir or "",
            "max_input_len": cfg.max_input_len or "",
            "lora_cache_size": cfg.lora_cache_size,
        },
    )
    _write_python_model(repo / cfg.model_name, cfg.version, src, text)
    return parsed


@dataclass(frozen=True, slots=True)
class CpuVlConfig:
    """Everything the CPU engine for vision-language models' config.pbtxt needs (the vLLM
    backend's tensors: vllm_contract.py; no batch dimension)."""

    model_name: str
    hf_model_dir: Path
    instance_count: int = 1
    max_concurrency: int = 4
    torch_threads: int = 1
    version: int = 1

    def validate(self) -> None:
        check_model_name(self.model_name)
        check_config_string("hf_model_dir", str(self.hf_model_dir))
        for name in ("instance_count", "max_concurrency", "torch_threads", "version"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not (self.hf_model_dir / "config.json").is_file():
            raise ValueError(f"hf_model_dir: {self.hf_model_dir} holds no config.json")


def render_cpu_vl_model(repo: Path, cfg: CpuVlConfig) -> model_config_pb2.ModelConfig:
    """Write `<repo>/<model_name>/` for the CPU engine for vision-language models; returns the
    parsed config. The model code is copied as render_cpu_model copies it; the rest of autoglm
    is imported from the installed package (the stub runs the venv's interpreter)."""
    cfg.validate()
    src = TEMPLATES / "cpu_vl"
    text, parsed = render_config(
        src / "config.pbtxt",
        {
            "model_name": cfg.model_name,
            "instance_count": cfg.instance_count,
            "hf_model_dir": cfg.hf_model_dir.resolve(),
            "max_concurrency": cfg.max_concurrency,
            "torch_threads": cfg.torch_threads,
        },
    )
    _write_python_model(repo / cfg.model_name, cfg.version, src, text)
    return parsed


def _write_python_model(model_root: Path, version: int, src: Path, config_text: str) -> None:
    """A python-backend model: the template's model.py in the version folder, then the
    rendered config.pbtxt, replaced atomically (Triton may be reading the old one)."""
    version_dir = model_root / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "1" / "model.py", version_dir / "model.py")
    tmp = model_root / "config.pbtxt.tmp"
    tmp.write_text(config_text)
    tmp.replace(model_root / "config.pbtxt")
