"""Pins (`<repo>/<model>/pin.json`): read, written, merged with --profile overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.build_engine.version_plan import (
    PIN,
    Candidate,
    Override,
    OverrideError,
    merge_overrides,
    read_pins,
    remove_pin,
    write_pin,
)


def _repo(tmp_path: Path, *models: str) -> Path:
    for m in models:
        (tmp_path / m / "1").mkdir(parents=True)
    return tmp_path


def test_write_read_remove(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "a", "b")
    write_pin(repo, Override(model="a", version=3))
    write_pin(repo, Override(model="b", profile_id="abc123"))
    assert read_pins(repo) == [
        Override(model="a", version=3),
        Override(model="b", profile_id="abc123"),
    ]
    assert remove_pin(repo, "a") and not remove_pin(repo, "a")
    assert read_pins(repo) == [Override(model="b", profile_id="abc123")]


def test_write_refuses_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(OverrideError, match="no model 'x'"):
        write_pin(_repo(tmp_path, "a"), Override(model="x", version=1))


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        "{}",
        '{"version": 1, "profile_id": "abc"}',
        '{"version": 0}',
        '{"version": "1"}',
        '{"version": true}',
        '{"profile_id": "../x"}',
    ],
)
def test_malformed_pin_names_the_file(tmp_path: Path, text: str) -> None:
    repo = _repo(tmp_path, "a")
    (repo / "a" / PIN).write_text(text)
    with pytest.raises(OverrideError, match=r"a/pin\.json"):
        read_pins(repo)


class _M:
    def __init__(self, profile_id: str) -> None:
        self.profile_id = profile_id


def _cand(model: str, profile_id: str) -> Candidate:
    return Candidate(model, 1, Path(model), _M(profile_id))  # type: ignore[arg-type]


def test_command_line_wins_over_pins() -> None:
    cands = [_cand("a", "pa"), _cand("b", "pb")]
    pins = [Override(model="a", version=1), Override(model="b", version=2)]
    given = [Override(model="a", version=5)]
    assert merge_overrides(given, pins, cands) == [*given, Override(model="b", version=2)]
    bare = [Override(profile_id="pb")]  # a bare profile id covers the model that holds it
    assert merge_overrides(bare, pins, cands) == [*bare, Override(model="a", version=1)]
    assert merge_overrides([], pins, cands) == pins
