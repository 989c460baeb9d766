"""`autoglm bench` is loaded lazily from autoglm.bench and says how to install its extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoglm.bench import profile
from autoglm.server import cli
from autoglm.server.telemetry import logs


@pytest.fixture(autouse=True)
def no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() would attach a handler to this test's captured stderr, which pytest closes after
    the test: later tests' log records (a façade's background threads) would hit a closed file."""
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)


def test_bench_help_comes_from_the_bench_package() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "autoglm.server.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("usage: autoglm bench")
    assert "--floor" in out


def test_product_commands_do_not_import_the_bench() -> None:
    code = (
        "import sys; from autoglm.server import cli; cli.build_parser();"
        "print(any(m.startswith('autoglm.bench') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The [bench] extra cannot be absent and present in one environment: hide py-spy.
    monkeypatch.setattr(profile, "py_spy", lambda: None)
    assert cli.main(["bench", "--scenario", "paced"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[bench]'" in err
    assert "py-spy" in err


def test_other_commands_still_refuse_unknown_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["token", "list", "--no-such-flag"])
    assert exc.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
