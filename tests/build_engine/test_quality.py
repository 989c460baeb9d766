"""Quality gate decisions (pure) and text chunking."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autoglm.build_engine.quality import (
    QualityGateError,
    QualityThresholds,
    Scores,
    apply_thresholds,
    enforce,
    judge,
    read_report,
    write_report,
)
from autoglm.build_engine.texts import (
    DEFAULT_CALIBRATION,
    DEFAULT_HELDOUT,
    load_texts,
    token_chunks,
)


def scores(ppl: float, preds: tuple[int, ...]) -> Scores:
    return Scores(math.log(ppl) * len(preds), len(preds), preds)


def test_pass() -> None:
    r = judge("fp8", scores(10.0, (1, 2, 3, 4)), scores(10.5, (1, 2, 3, 4)), QualityThresholds())
    assert r.passed and r.ppl_ratio == pytest.approx(1.05) and r.token_agreement == 1.0
    assert enforce(r) is r


def test_fail_names_both_reasons() -> None:
    r = judge(
        "int8_sq",
        scores(10.0, (1, 2, 3, 4)),
        scores(20.0, (1, 9, 9, 4)),
        QualityThresholds(max_ppl_ratio=1.1, min_token_agreement=0.9),
    )
    assert not r.passed
    with pytest.raises(
        QualityGateError, match=r"int8_sq.*perplexity ratio 2\.0000 > 1\.1.*50\.00% < 90%"
    ):
        enforce(r)


def test_rejudge_and_report_roundtrip(tmp_path: Path) -> None:
    r = judge("fp8", scores(10.0, (1, 2)), scores(11.0, (1, 2)), QualityThresholds())
    path = write_report(tmp_path / "quality.json", r)
    assert read_report(path) == r
    strict = apply_thresholds(r, QualityThresholds(max_ppl_ratio=1.05))
    assert not strict.passed and strict.max_ppl_ratio == 1.05


def test_missing_report(tmp_path: Path) -> None:
    with pytest.raises(QualityGateError, match="no quality report"):
        read_report(tmp_path / "quality.json")


def test_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="max_ppl_ratio"):
        QualityThresholds(max_ppl_ratio=0.5).validate()


def test_shipped_texts_are_local_and_mixed() -> None:
    calib = load_texts(DEFAULT_CALIBRATION)
    held = load_texts(DEFAULT_HELDOUT)
    assert len(calib) >= 10 and len(held) >= 5
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(calib))  # some Chinese
    assert not set(calib) & set(held)  # held-out text is not calibration text


def test_load_folder(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\n\nthird")
    (tmp_path / "a.txt").write_text("first")
    assert load_texts(tmp_path) == ["first", "second", "third"]


def test_token_chunks() -> None:
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    chunks = token_chunks(encode, ["abcdefg"], chunk_len=4, max_chunks=5)
    assert chunks == [[97, 98, 99, 100], [101, 102, 103, 10], [10]][:2]
    assert len(token_chunks(encode, ["x" * 100], chunk_len=4, max_chunks=3)) == 3
