"""Save and restore a ModelOpt fake-quantized model next to its unchanged HF weights.

The build (build_engine/quantize.py, `--sku cpu` with a quantized precision) calibrates the HF
model with ModelOpt PTQ; the CPU reference engine (runner.py) then serves exactly that model, so
the precision's effect is visible without a GPU. The numerics are ModelOpt's simulated
("fake") quantization in fp32, not TensorRT kernels.

A fake-quant directory holds:
- `modelopt_state.pt`: `mto.modelopt_state(model)` (the quantizers ModelOpt inserted and their
  config; modelopt/torch/opt/conversion.py, read back with `mto.load_modelopt_state`, which
  uses `torch.load(weights_only=True)`);
- `quantizers.safetensors`: every state-dict entry PTQ added or changed (the calibrated `_amax`
  of each quantizer; smoothed weights for SmoothQuant), a few hundred KB instead of a second
  copy of the 540 MB fp32 weights, which stay in the HF folder;
- `fake_quant.json`: precision, KV cache dtype, ModelOpt version, entry count (checked on
  restore: a version serves the precision its manifest says, or refuses to load).
Restoring = load the HF model, `mto.restore_from_modelopt_state`, load the entries, then
`mtq.fold_weight` (weights fake-quantized once instead of at every forward; same numbers).
"""

from __future__ import annotations

import json
import locale
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

STATE_FILE = "modelopt_state.pt"
TENSORS_FILE = "quantizers.safetensors"
INFO_FILE = "fake_quant.json"
FORMAT = "modelopt-fake-quant/1"


class FakeQuantError(RuntimeError):
    """A fake-quant directory is missing, inconsistent, or not the expected precision."""


@dataclass(frozen=True, slots=True)
class FakeQuantInfo:
    precision: str
    kv_cache_dtype: str
    modelopt_version: str
    entries: int  # tensors in quantizers.safetensors
    format: str = FORMAT

    @classmethod
    def read(cls, directory: Path) -> FakeQuantInfo:
        path = directory / INFO_FILE
        try:
            data = json.loads(path.read_text())
            info = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise FakeQuantError(f"{path}: unreadable fake-quant description ({exc})") from None
        if info.format != FORMAT:
            raise FakeQuantError(f"{path}: format {info.format!r}, expected {FORMAT!r}")
        return info


def changed_entries(
    model: torch.nn.Module, base: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """State-dict entries of `model` that are new or differ from `base` (contiguous copies)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        old = base.get(key)
        if old is None or old.shape != value.shape or not torch.equal(old, value):
            out[key] = value.detach().contiguous().clone()
    return out


def save(
    model: torch.nn.Module,
    base: Mapping[str, torch.Tensor],
    directory: Path,
    *,
    precision: str,
    kv_cache_dtype: str,
) -> FakeQuantInfo:
    """Write the fake-quant directory for a ModelOpt-quantized `model` (base: its state before)."""
    import modelopt
    import modelopt.torch.opt as mto
    import torch
    from safetensors.torch import save_file

    entries = changed_entries(model, base)
    if not any("quantizer" in k for k in entries):
        raise FakeQuantError("the model holds no calibrated ModelOpt quantizer")
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(mto.modelopt_state(model), directory / STATE_FILE)
    save_file(entries, str(directory / TENSORS_FILE))
    info = FakeQuantInfo(precision, kv_cache_dtype, modelopt.__version__, len(entries))
    (directory / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def _utf8_text_files() -> None:
    """Make `open()` without an encoding read UTF-8 in an embedded interpreter.

    Triton's python-backend stub embeds Python without UTF-8 mode (PEP 540 only applies to the
    `python` executable), so under the C locale `open()` defaults to ASCII. Importing
    modelopt.torch.quantization runs `torch.compile`, whose inductor reads its kernel templates
    that way (torch/_inductor/utils.py `load_template`) and failed in the stub with
    "UnicodeDecodeError: 'ascii' codec can't decode byte 0xe2 in position 602". The default
    text encoding follows LC_CTYPE, so switching it to C.UTF-8 (glibc's built-in) is enough.
    """
    if locale.getpreferredencoding(False).lower().replace("-", "") != "utf8":
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")


def restore(model: torch.nn.Module, directory: Path, *, precision: str) -> torch.nn.Module:
    """The fake-quantized model, weights folded; FakeQuantError unless it is `precision`."""
    _utf8_text_files()
    import modelopt.torch.opt as mto
    import modelopt.torch.quantization as mtq
    from safetensors.torch import load_file

    info = FakeQuantInfo.read(directory)
    if info.precision != precision:
        raise FakeQuantError(
            f"{directory} holds a {info.precision!r} fake-quant model, the version is {precision!r}"
        )
    try:
        state = mto.load_modelopt_state(directory / STATE_FILE)
        entries = load_file(str(directory / TENSORS_FILE))
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise FakeQuantError(f"{directory}: cannot read the ModelOpt state ({exc})") from None
    if len(entries) != info.entries:
        raise FakeQuantError(
            f"{directory / TENSORS_FILE}: {len(entries)} tensors, {INFO_FILE} says {info.entries}"
        )
    model = mto.restore_from_modelopt_state(model, modelopt_state=state)
    result = model.load_state_dict(entries, strict=False)
    # Missing keys are the base weights (they came from the HF folder); a quantizer buffer among
    # them would leave a default amax, i.e. silently different numerics.
    missing = [k for k in result.missing_keys if "quantizer" in k]
    if result.unexpected_keys or missing:
        raise FakeQuantError(
            f"{directory}: the saved state does not fit this model (unexpected "
            f"{result.unexpected_keys[:3]}, missing quantizer entries {missing[:3]})"
        )
    mtq.fold_weight(model)
    return model.eval()
