"""The harness's per-scenario load settings (pure logic, no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.bench.harness import BenchOptions, ramp_up_for
from autoglm.bench.workload import LengthDist


def _opts(**kw: object) -> BenchOptions:
    return BenchOptions(model_dir=Path("/nonexistent"), out_dir=Path("out"), **kw)  # type: ignore[arg-type]


def test_paced_streams_start_over_one_request_by_default() -> None:
    o = _opts(tokens_per_second=40.0, output_len=LengthDist(48, 80), warmup_s=3.0)
    assert ramp_up_for(o, "paced") == pytest.approx(64 / 40)
    assert ramp_up_for(o, "unpaced") == 0.0
    assert ramp_up_for(o, "cpu-model") == 0.0


def test_default_ramp_up_fits_in_the_warm_up() -> None:
    o = _opts(tokens_per_second=10.0, output_len=LengthDist(64, 64), warmup_s=3.0)
    assert ramp_up_for(o, "paced") == 3.0


def test_explicit_ramp_up_applies_to_every_scenario() -> None:
    o = _opts(ramp_up_s=0.0)
    assert ramp_up_for(o, "paced") == 0.0
    o = _opts(ramp_up_s=1.0)
    assert ramp_up_for(o, "unpaced") == 1.0


def test_ramp_up_longer_than_the_warm_up_is_refused() -> None:
    with pytest.raises(ValueError, match=r"ramp_up: must be between 0 and the warm-up \(3 s\)"):
        _opts(ramp_up_s=5.0, warmup_s=3.0).validate()
    with pytest.raises(ValueError, match="ramp_up"):
        _opts(ramp_up_s=-1.0).validate()


def test_floor_needs_the_unix_link() -> None:
    """The bare relay reaches Triton by its unix socket only: refused up front, naming it."""
    with pytest.raises(ValueError, match=r"floor: .*--engine-link unix"):
        _opts(floor=True, engine_link="tls").validate()


def test_paths_default_to_all_three_and_need_direct() -> None:
    assert _opts().paths == ("direct", "facade", "openai")
    with pytest.raises(ValueError, match=r"paths: use direct, facade, openai, direct always"):
        _opts(paths=("facade", "openai")).validate()
    with pytest.raises(ValueError, match=r"paths: .*got direct, grpc"):
        _opts(paths=("direct", "grpc")).validate()


def test_cli_paths_flag() -> None:
    from autoglm.bench.cli import build_parser

    assert build_parser().parse_args([]).paths == "direct,facade,openai"
    assert build_parser().parse_args(["--paths", "direct,openai"]).paths == "direct,openai"
