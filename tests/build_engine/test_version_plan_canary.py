"""Canary records (version_plan.py) and `autoglm build activate --canary/--promote/--rollback`."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from autoglm.build_engine.canary_records import (
    Canary,
    promote_canary,
    read_canaries,
    remove_canary,
    write_canary,
)
from autoglm.build_engine.cli import main
from autoglm.build_engine.install import install
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.version_plan import OverrideError, read_pins


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = main(list(argv), console=Console(file=out, width=200))
    return rc, out.getvalue()


def fake_repo(tmp_path: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
    for v in versions:
        (tmp_path / "m" / str(v)).mkdir(parents=True)
    return tmp_path


def test_write_read_promote_remove(tmp_path: Path) -> None:
    repo = fake_repo(tmp_path)
    assert read_canaries(repo) == {}
    path = write_canary(repo, Canary("m", 2, 10))
    assert json.loads(path.read_text()) == {"version": 2, "weight": 10}
    assert read_canaries(repo) == {"m": Canary("m", 2, 10)}
    assert remove_canary(repo, "m") == Canary("m", 2, 10) and read_canaries(repo) == {}
    assert remove_canary(repo, "m") is None
    write_canary(repo, Canary("m", 2, 99))
    assert promote_canary(repo, "m") == Canary("m", 2, 99)
    assert read_canaries(repo) == {} and [(p.model, p.version) for p in read_pins(repo)] == [
        ("m", 2)
    ]
    with pytest.raises(OverrideError, match="m has no canary"):
        promote_canary(repo, "m")


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        (Canary("m", 2, 0), "weight must be an integer in 1..99, got 0"),
        (Canary("m", 2, 100), "weight must be an integer in 1..99, got 100"),
        (Canary("m", 0, 10), "version must be a positive integer, got 0"),
        (Canary("m", 7, 10), "m has no installed version 7"),
        (Canary("x", 2, 10), "no model 'x'"),
    ],
)
def test_bad_canaries_are_refused(tmp_path: Path, canary: Canary, message: str) -> None:
    repo = fake_repo(tmp_path)
    with pytest.raises(OverrideError, match=message):
        write_canary(repo, canary)
    assert not (repo / "m" / "canary.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"version": 2, "weight": 120}', "weight must be an integer in 1..99"),
        ('{"version": "2", "weight": 10}', "version must be a positive integer"),
        ("[1]", "canary.json"),
        ("{", "canary.json"),
    ],
)
def test_malformed_canary_file_names_it(tmp_path: Path, text: str, message: str) -> None:
    repo = fake_repo(tmp_path)
    (repo / "m" / "canary.json").write_text(text)
    with pytest.raises(OverrideError, match=message):
        read_canaries(repo)


def test_activate_canary_promote_rollback(model_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    plan = BuildPlan(
        model_dir=model_dir,
        sku="cpu",
        precision="fp32",
        output_dir=tmp_path / "out",
        model_repo=repo,
        model_name="smollm2",
    )
    install(plan)
    install(plan)
    install(dataclasses.replace(plan, max_input_len=4))  # version 3: built for short prompts
    record = repo / "smollm2" / "canary.json"
    base = ("activate", "smollm2", "--repository", str(repo))
    assert run(*base, "--version", "1")[0] == 0  # the stable version, pinned

    rc, text = run(*base, "--canary", "2", "--weight", "10")
    assert rc == 0 and "version 2 as a canary for 10% of principals" in text, text
    assert json.loads(record.read_text()) == {"version": 2, "weight": 10}
    # Refusals name the option; nothing changes.
    for args, message in (
        (("--canary", "2"), "--weight: give it with --canary"),
        (("--version", "1", "--weight", "5"), "--weight: give it with --canary"),
        (("--canary", "2", "--weight", "0"), "weight must be an integer in 1..99"),
        (("--canary", "9", "--weight", "5"), "--canary 9 cannot be served here"),
        (("--canary", "1", "--weight", "5"), "--canary 1: that is the version served now"),
        (
            ("--canary", "3", "--weight", "5"),
            "--canary 3 cannot run beside version 1: max_input_len: the canary was built for 4,"
            " the stable version for 1024",
        ),
    ):
        rc, text = run(*base, *args)
        assert rc == 2 and message in text, (args, text)
    assert json.loads(record.read_text()) == {"version": 2, "weight": 10}

    rc, text = run(*base, "--rollback")
    assert rc == 0 and "canary version 2 ended" in text and not record.exists()
    rc, text = run(*base, "--rollback")
    assert rc == 0 and "had no canary" in text

    assert run(*base, "--canary", "2", "--weight", "50")[0] == 0
    rc, text = run(*base, "--promote")
    assert rc == 0 and "version 2 promoted" in text and not record.exists()
    assert json.loads((repo / "smollm2" / "pin.json").read_text()) == {"version": 2}
