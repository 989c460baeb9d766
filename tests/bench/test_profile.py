"""Summary of py-spy's collapsed stacks."""

from __future__ import annotations

import pytest

from autoglm.bench.profile import by_area, summarize_collapsed

COLLAPSED = """\
main (/x/lib/python3.11/asyncio/base_events.py:1);_run (/x/site-packages/grpc/aio/_call.py:9) 6
main (/x/lib/python3.11/asyncio/base_events.py:1);add (/w/server/generation/detokenizer.py:5) 3
main (/x/lib/python3.11/asyncio/base_events.py:1) 1
garbage line
"""


def test_summarize_collapsed() -> None:
    samples, top = summarize_collapsed(COLLAPSED)
    assert samples == 10
    assert top[0].frame == "_run (grpc/aio/_call.py:9)"
    assert top[0].self_pct == pytest.approx(60.0)
    by_frame = {t.frame: t for t in top}
    assert by_frame["main (asyncio/base_events.py:1)"].total_pct == pytest.approx(100.0)
    assert by_frame["add (server/generation/detokenizer.py:5)"].self_pct == pytest.approx(30.0)
    assert summarize_collapsed("") == (0, [])


def test_by_area_uses_the_innermost_known_frame() -> None:
    areas = by_area(COLLAPSED)
    assert areas == pytest.approx(
        {
            "grpc (python, Cython, C core)": 60.0,
            "façade code (autoglm server/)": 30.0,
            "asyncio event loop": 10.0,
        }
    )
