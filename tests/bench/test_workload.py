"""Workload distributions: parsing, determinism, and the synthetic id cycle."""

from __future__ import annotations

import random

import pytest

from autoglm.bench.workload import LengthDist, Workload, token_cycle


def _encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def _decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def test_length_dist_parse_and_sample() -> None:
    assert LengthDist.parse("128") == LengthDist(128, 128)
    d = LengthDist.parse("10-20")
    rng = random.Random(0)
    assert all(10 <= d.sample(rng) <= 20 for _ in range(200))
    assert str(d) == "10-20"
    for bad in ("0", "x", "20-10", "-5"):
        with pytest.raises(ValueError):
            LengthDist.parse(bad)


def test_workload_is_reproducible_and_sized() -> None:
    a = Workload(LengthDist(5, 50), LengthDist(8, 16), _encode, _decode, seed=3)
    b = Workload(LengthDist(5, 50), LengthDist(8, 16), _encode, _decode, seed=3)
    reqs = [a.next() for _ in range(100)]
    assert reqs == [b.next() for _ in range(100)]
    assert all(5 <= len(r.prompt_ids) <= 50 and 8 <= r.max_tokens <= 16 for r in reqs)
    assert all(list(r.prompt_ids) == _encode(r.prompt) for r in reqs)


def test_token_cycle_length() -> None:
    assert len(token_cycle(_encode, length=1000)) == 1000
