"""The synthetic engine (benchmark tool): its pure logic and its rendered config."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.triton_models import contract
from autoglm.triton_models.synthetic import (
    CancellationCheck,
    Pacer,
    parse_token_ids,
    render_synthetic_model,
    synthetic_ids,
)


def test_ids_cycle_and_skip_end_id() -> None:
    assert list(synthetic_ids([5, 2, 7], 7, end_id=2)) == [5, 7, 5, 7, 5, 7, 5]
    assert list(synthetic_ids([5], 0, end_id=None)) == []
    with pytest.raises(ValueError, match="end_id"):
        list(synthetic_ids([2], 1, end_id=2))


def test_ids_start_at_the_seed_position() -> None:
    # Position counts in the usable cycle (end_id removed): [5, 7, 9], start 4 -> 4 % 3 = 1.
    assert list(synthetic_ids([5, 2, 7, 9], 5, end_id=2, start=4)) == [7, 9, 5, 7, 9]
    assert list(synthetic_ids([5, 7], 3, end_id=None, start=2**63 + 1)) == [7, 5, 7]
    with pytest.raises(ValueError, match="start"):
        list(synthetic_ids([5], 1, end_id=None, start=-1))


def test_parse_token_ids() -> None:
    assert parse_token_ids("1, 2,3") == (1, 2, 3)
    for bad in ("", "1,-2"):
        with pytest.raises(ValueError):
            parse_token_ids(bad)


def test_pacer_is_absolute() -> None:
    p = Pacer(40.0, start=100.0)
    assert p.delay(0, 100.0) == pytest.approx(0.025)
    assert p.delay(3, 100.05) == pytest.approx(0.05)  # due at 100.1
    assert p.delay(3, 101.0) == 0.0  # late: no wait, no drift added
    assert Pacer(0.0, 0.0).delay(10, 0.0) == 0.0


def test_cancellation_is_checked_first_then_once_per_period() -> None:
    check = CancellationCheck(0.1)
    assert check.due(5.0)  # before the first token
    assert not check.due(5.025)
    assert not check.due(5.099)
    assert check.due(5.1)
    assert not check.due(5.15)
    assert check.due(7.0)  # after a long gap: at once, then a period from there
    assert not check.due(7.05)
    every = CancellationCheck(0.0)
    assert all(every.due(t) for t in (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="cancellation_check_period_ms"):
        CancellationCheck(-0.001)


def test_render_matches_the_contract(tmp_path: Path) -> None:
    cfg = render_synthetic_model(tmp_path, "bench-synth", 40.0, 2, token_ids=[11, 12])
    assert cfg.model_transaction_policy.decoupled
    assert cfg.backend == "python"
    assert [i.name for i in cfg.input] == [t.name for t in contract.INPUTS]
    assert [o.name for o in cfg.output] == [t.name for t in contract.OUTPUTS]
    assert cfg.instance_group[0].count == 2
    assert cfg.parameters["tokens_per_second"].string_value == "40.0"
    assert cfg.parameters["token_ids"].string_value == "11,12"
    # The tensorrtllm backend's default (tensorrt_llm.py).
    assert cfg.parameters["cancellation_check_period_ms"].string_value == "100"
    assert (tmp_path / "bench-synth" / "1" / "model.py").is_file()
    with pytest.raises(ValueError):
        render_synthetic_model(tmp_path, "../x", 1.0, token_ids=[1])
    with pytest.raises(ValueError):
        render_synthetic_model(tmp_path, "ok", -1.0, token_ids=[1])
    with pytest.raises(ValueError, match="cancellation_check_period_ms"):
        render_synthetic_model(tmp_path, "ok", 1.0, token_ids=[1], cancellation_check_period_ms=-1)
    every = render_synthetic_model(
        tmp_path, "ok", 1.0, token_ids=[1], cancellation_check_period_ms=0
    )
    assert every.parameters["cancellation_check_period_ms"].string_value == "0"
