"""The ModelOpt quant config builder against both preset shapes, and against the installed release.

ModelOpt <= 0.43 writes a preset's `quant_cfg` as a dict, >= 0.44 as a list of rules; the
TensorRT-LLM 1.2.x container has 0.37, the project pins 0.47 (quantize.py's docstring). The
presets below are cut-down copies of each release's modelopt/torch/quantization/config.py, so
both shapes are checked here whichever release is installed; `.ci/modelopt-0.37.sh` runs this
file (and test_quantize.py) under 0.37 itself.
"""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace
from typing import Any

import pytest

from autoglm.build_engine.quantize import (
    KV_PATTERN,
    MTQ_CONFIGS,
    QuantizeError,
    int8_weight_only_cfg,
    quant_config,
    quant_config_from,
)

# 0.37: dict form, no INT8_WEIGHT_ONLY_CFG.
DISABLED_037: dict[str, Any] = {
    "nn.BatchNorm1d": {"*": {"enable": False}},
    "*lm_head*": {"enable": False},
    "default": {"enable": False},
}
PRESETS_037 = SimpleNamespace(
    FP8_DEFAULT_CFG={
        "quant_cfg": {
            "*weight_quantizer": {"num_bits": (4, 3), "axis": None},
            "*input_quantizer": {"num_bits": (4, 3), "axis": None},
            **DISABLED_037,
        },
        "algorithm": "max",
    },
    INT8_SMOOTHQUANT_CFG={
        "quant_cfg": {
            "*weight_quantizer": {"num_bits": 8, "axis": 0},
            "*input_quantizer": {"num_bits": 8, "axis": None},
            **DISABLED_037,
        },
        "algorithm": "smoothquant",
    },
    config=SimpleNamespace(_default_disabled_quantizer_cfg=DISABLED_037),
)
# 0.44+: list form, INT8_WEIGHT_ONLY_CFG present.
RULES_047: list[dict[str, Any]] = [
    {"quantizer_name": "*", "enable": False},
    {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}},
    {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}},
    {"quantizer_name": "*lm_head*", "enable": False},
]
PRESETS_047 = SimpleNamespace(
    FP8_DEFAULT_CFG={"quant_cfg": RULES_047, "algorithm": "max"},
    INT8_SMOOTHQUANT_CFG={"quant_cfg": RULES_047, "algorithm": "smoothquant"},
    INT8_WEIGHT_ONLY_CFG={"quant_cfg": RULES_047[:2], "algorithm": "max"},
)


@pytest.mark.parametrize(
    ("precision", "kv", "num_bits"), [("fp8", "fp8", (4, 3)), ("int8_sq", "int8", 8)]
)
def test_kv_rule_on_dict_presets(precision: str, kv: str, num_bits: object) -> None:
    before = copy.deepcopy(PRESETS_037)
    cfg = quant_config_from(PRESETS_037, precision, kv)
    rules = cfg["quant_cfg"]
    assert isinstance(rules, dict)
    assert rules[KV_PATTERN] == {"num_bits": num_bits, "axis": None, "enable": True}
    # "default" stays: set_quantizer_by_cfg applies it first, then every pattern (0.37's
    # modelopt/torch/quantization/conversion.py).
    assert rules["default"] == {"enable": False}
    assert before == PRESETS_037  # the module-level preset is not touched


@pytest.mark.parametrize(
    ("precision", "kv", "num_bits"), [("fp8", "fp8", (4, 3)), ("int8_sq", "int8", 8)]
)
def test_kv_rule_on_list_presets(precision: str, kv: str, num_bits: object) -> None:
    cfg = quant_config_from(PRESETS_047, precision, kv)
    assert cfg["quant_cfg"][:-1] == RULES_047
    assert cfg["quant_cfg"][-1] == {
        "quantizer_name": KV_PATTERN,
        "cfg": {"num_bits": num_bits, "axis": None},
    }
    assert len(PRESETS_047.FP8_DEFAULT_CFG["quant_cfg"]) == len(RULES_047)


def test_no_kv_rule_for_auto() -> None:
    assert quant_config_from(PRESETS_037, "fp8", "auto") == PRESETS_037.FP8_DEFAULT_CFG
    assert quant_config_from(PRESETS_047, "fp8", "auto") == PRESETS_047.FP8_DEFAULT_CFG


def test_int8_weight_only_built_as_039_defines_it() -> None:
    # modelopt 0.39.0 modelopt/torch/quantization/config.py INT8_WEIGHT_ONLY_CFG, verbatim.
    expected = {
        "quant_cfg": {
            "*weight_quantizer": {"num_bits": 8, "axis": 0},
            "*input_quantizer": {"enable": False},
            **DISABLED_037,
        },
        "algorithm": "max",
    }
    assert quant_config_from(PRESETS_037, "int8_wo", "auto") == expected
    assert int8_weight_only_cfg(DISABLED_037) == expected
    # A release that has the preset uses its own.
    assert quant_config_from(PRESETS_047, "int8_wo", "auto") == PRESETS_047.INT8_WEIGHT_ONLY_CFG


def test_missing_preset_and_unknown_shape_are_refused() -> None:
    with pytest.raises(QuantizeError, match="no NVFP4_DEFAULT_CFG preset for 'nvfp4'"):
        quant_config_from(PRESETS_037, "nvfp4", "auto")
    with pytest.raises(QuantizeError, match="precision 'bf16' is not a ModelOpt PTQ format"):
        quant_config_from(PRESETS_037, "bf16", "auto")
    odd = SimpleNamespace(FP8_DEFAULT_CFG={"quant_cfg": (), "algorithm": "max"})
    with pytest.raises(QuantizeError, match=r"neither the dict .* nor the list"):
        quant_config_from(odd, "fp8", "fp8")


@pytest.mark.parametrize("precision", sorted(MTQ_CONFIGS))
def test_installed_modelopt_accepts_every_config(precision: str) -> None:
    """The built config validates against the installed release's own QuantizeConfig."""
    mtq = pytest.importorskip("modelopt.torch.quantization")
    kv = {"fp8": "fp8", "int8_sq": "int8", "nvfp4": "fp8"}.get(precision, "auto")
    cfg = quant_config(precision, kv)
    mtq.config.QuantizeConfig.model_validate(cfg)


def test_expected_modelopt_release() -> None:
    """`.ci/modelopt-0.37.sh` sets AUTOGLM_EXPECT_MODELOPT: that job really ran under 0.37."""
    expected = os.environ.get("AUTOGLM_EXPECT_MODELOPT")
    if not expected:
        pytest.skip("AUTOGLM_EXPECT_MODELOPT not set (the project's own pin is in use)")
    import modelopt

    assert modelopt.__version__.startswith(expected + "."), modelopt.__version__
