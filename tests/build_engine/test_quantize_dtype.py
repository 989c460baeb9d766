"""Which dtype the checkpoint is exported in and the quality gate scores in (pure)."""

from __future__ import annotations

import pytest

from autoglm.build_engine.quantize import (
    QuantizeError,
    checkpoint_dtype,
    model_dtype,
    relabel_weight_only,
    score_dtypes,
)


def test_model_dtype_from_either_key() -> None:
    assert model_dtype({"dtype": "bfloat16"}) == "bfloat16"  # transformers 5
    assert model_dtype({"torch_dtype": "float16"}) == "float16"  # transformers 4
    assert model_dtype({}) == "float32"  # transformers' default when none is declared
    with pytest.raises(QuantizeError, match=r"config.json dtype 'int8' is not one of"):
        model_dtype({"dtype": "int8"})


@pytest.mark.parametrize(
    ("precision", "source", "expected"),
    [
        ("fp8", "bfloat16", "bfloat16"),  # a bf16 model stays bf16 (was float16)
        ("int8_sq", "float16", "float16"),
        ("int8_wo", "float32", "float16"),  # TensorRT-LLM's --dtype auto: fp32 -> fp16
        ("bf16", "float32", "bfloat16"),
        ("fp16", "bfloat16", "float16"),
    ],
)
def test_checkpoint_dtype(precision: str, source: str, expected: str) -> None:
    assert checkpoint_dtype(precision, source) == expected


def test_score_dtypes() -> None:
    # GPU: the base model as shipped, the quantized one in the engine's dtype.
    assert score_dtypes("fp8", "bfloat16", cpu=False) == ("bfloat16", "bfloat16")
    assert score_dtypes("fp8", "float32", cpu=False) == ("float32", "float16")
    assert score_dtypes("fp16", "bfloat16", cpu=False) == ("bfloat16", "float16")
    # CPU reference engine: it serves float32.
    assert score_dtypes("fp8", "bfloat16", cpu=True) == ("float32", "float32")


def test_relabel_weight_only() -> None:
    config = {"dtype": "float16", "quantization": {"quant_algo": None, "kv_cache_quant_algo": None}}
    assert relabel_weight_only(config) == {
        "dtype": "float16",
        "quantization": {"quant_algo": "W8A16", "kv_cache_quant_algo": None},
    }
    assert config["quantization"]["quant_algo"] is None  # not changed in place
