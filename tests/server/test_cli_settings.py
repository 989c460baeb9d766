"""`autoglm serve`'s settings through the real CLI: --config, AUTOGLM_*, --print-config, and the
defaults in every subcommand's help."""

from __future__ import annotations

import argparse
import logging
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoglm.build_engine.switch_plan import GIB, SwitchPolicy
from autoglm.server import cli, cli_serve, settings_sources
from autoglm.server.settings import Settings
from autoglm.server.telemetry import logs

# Settings `serve` accepts without anything to connect to: plaintext on loopback, one model.
BASE = ["--insecure-dev", "--model", "m=m:/tmp/m"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AUTOGLM_* of the caller's; main()'s logging set-up left alone (caplog sees records)."""
    for name in [n for n in os.environ if n.startswith("AUTOGLM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    yield


def serve_parser() -> argparse.ArgumentParser:
    return settings_sources.subcommand(cli.build_parser(), "serve")


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, print_config: bool = True
) -> tuple[int, str, str]:
    code = cli.main(["serve", *argv, *(["--print-config"] if print_config else [])])
    out, err = capsys.readouterr()
    return code, out, err


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, tuple[Any, str]]:
    """key → (value, source) from `serve … --print-config`."""
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    values = tomllib.loads(out)
    sources = {}
    for line in out.splitlines()[2:]:
        m = re.fullmatch(r"#? ?(\w+) = .*?\s+# (.+)", line)
        assert m, line
        sources[m.group(1)] = m.group(2)
    return {k: (values.get(k), s) for k, s in sources.items()}


def write(tmp_path: Path, text: str, name: str = "serve.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _choices_case() -> tuple[str, list[str], str, str, Any, Any, Any, Any]:
    """The first serve flag with choices (whichever exist now): flag/file take a non-default
    choice, the environment the default one, so each step is seen."""
    action = next(a for a in serve_parser()._actions if a.choices and a.option_strings)
    other = next(c for c in action.choices if c != action.default)
    flag = max(action.option_strings, key=len)
    return (
        action.dest, [flag, other], action.default, f'"{other}"',
        other, action.default, other, action.default,
    )  # fmt: skip


# kind: (key, flag argv, env text, TOML value, value by flag, by env, by file, default)
CASES: dict[str, tuple[str, list[str], str, str, Any, Any, Any, Any]] = {
    "int": ("max_in_flight", ["--max-in-flight", "3"], "4", "5", 3, 4, 5, 256),
    "float": ("grace", ["--grace", "1.5"], "2.5", "3", 1.5, 2.5, 3.0, 10.0),
    "bool": ("audit_text", ["--audit-text"], "false", "true", True, False, True, False),
    "path": ("audit_dir", ["--audit-dir", "/f"], "/e", '"/t"', "/f", "/e", "/t", None),
    "append": (
        "profile",
        ["--profile", "p1", "--profile", "p2"],
        "e1,e2",
        '["t1"]',
        ["p1", "p2"],
        ["e1", "e2"],
        ["t1"],
        [],
    ),
}


@pytest.mark.parametrize("kind", [*CASES, "choices"])
def test_serve_precedence_flag_env_file_default(
    kind: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, argv, env_text, toml_text, by_flag, by_env, by_file, default = (
        _choices_case() if kind == "choices" else CASES[kind]
    )
    env = f"AUTOGLM_{key.upper()}"
    config = write(tmp_path, f"{key} = {toml_text}\n")
    monkeypatch.setenv(env, env_text)
    assert printed(capsys, *BASE, "--config", str(config), *argv)[key] == (by_flag, "flag")
    assert printed(capsys, *BASE, "--config", str(config))[key] == (by_env, f"env {env}")
    monkeypatch.delenv(env)
    assert printed(capsys, *BASE, "--config", str(config))[key] == (by_file, f"file {config}")
    assert printed(capsys, *BASE)[key] == (default, "default")


def test_values_only_in_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'insecure_dev = true\nmodel = ["a=ta:/tok/a", "b=tb:/tok/b"]\nworkers = 2\n'
        'listen = "127.0.0.1:7000"\nmetrics-listen = ""\n',
    )
    got = printed(capsys, "--config", str(config))
    assert got["model"] == (["a=ta:/tok/a", "b=tb:/tok/b"], f"file {config}")
    assert got["workers"] == (2, f"file {config}") and got["metrics_listen"][0] == ""
    assert got["triton"] == ("127.0.0.1:8001", "default")


def test_the_config_file_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_CONFIG", str(write(tmp_path, "grace = 4")))
    assert printed(capsys, *BASE)["grace"][0] == 4.0
    # --config wins over AUTOGLM_CONFIG
    config = write(tmp_path, "grace = 5", "other.toml")
    assert printed(capsys, *BASE, "--config", str(config))["grace"][0] == 5.0


def test_print_config_reads_back(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    first = printed(capsys, *BASE, "--grace", "7", "--profile", "x", "--audit-dir", "/a")
    _, out, _ = run(capsys, *BASE, "--grace", "7", "--profile", "x", "--audit-dir", "/a")
    saved = write(tmp_path, out, "saved.toml")
    again = printed(capsys, "--config", str(saved))
    assert {k: v for k, (v, _) in again.items()} == {k: v for k, (v, _) in first.items()}
    assert again["grace"] == (7.0, f"file {saved}") and again["tls_cert"] == (None, "default")


def test_print_config_never_shows_a_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret = tmp_path / "triton-secret"
    secret.write_text("s3cret-content\n")
    tmp_path.chmod(0o700)  # the socket's directory must be private (settings.validate)
    code, out, err = run(
        capsys, *BASE, "--triton", f"unix:{tmp_path}/grpc:1", "--triton-secret-file", str(secret)
    )
    assert code == 0, err
    assert "s3cret" not in out and f'triton_secret_file = "{secret}"' in out


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("max_in_flights = 3", "unknown key 'max_in_flights': not a setting of autoglm serve"
         " (did you mean max_in_flight?)"),
        ("max_in_flight = 'lots'", "max_in_flight in {file}: invalid int value: 'lots'"),
        ("workers = 1.5", "workers in {file}: invalid int value: '1.5'"),
        ("audit_text = 1", "audit_text in {file}: expected true or false, got 1"),
        ("model = 'm=m:/d'", "model in {file}: expected an array"),
        ("grace = ", "{file}: not valid TOML"),
        ("config = 'x.toml'", "{file}: unknown key 'config'"),
    ],
)  # fmt: skip
def test_bad_files_exit_2_naming_key_and_file(
    toml: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, toml)
    code, out, err = run(capsys, *BASE, "--config", str(config))
    assert code == 2 and out == ""
    assert err.startswith("autoglm: error: ") and message.format(file=config) in err


def test_unreadable_files_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, *BASE, "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and err == f"autoglm: error: --config {tmp_path}/missing.toml: " \
        "No such file or directory\n"  # fmt: skip
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"grace = '\xff'")
    code, _, err = run(capsys, *BASE, "--config", str(binary))
    assert code == 2 and "not UTF-8" in err
    code, _, err = run(capsys, *BASE, "--config", str(tmp_path))  # a folder
    assert code == 2 and "Is a directory" in err


def test_bad_env_values_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_INSECURE_DEV", "maybe")
    code, _, err = run(capsys, "--model", "m=m:/tmp/m")
    assert code == 2 and "autoglm: error: AUTOGLM_INSECURE_DEV: 'maybe' is not a boolean" in err
    monkeypatch.setenv("AUTOGLM_INSECURE_DEV", "1")
    monkeypatch.setenv("AUTOGLM_HEALTH_INTERVAL", "often")
    code, _, err = run(capsys, "--model", "m=m:/tmp/m")
    assert code == 2 and "AUTOGLM_HEALTH_INTERVAL: invalid float value: 'often'" in err


def test_unknown_env_variables_warn_only(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("AUTOGLM_MAX_INFLIGHT", "3")
    monkeypatch.setenv("AUTOGLM_HOME", "/tmp/home")
    monkeypatch.setenv("AUTOGLM_MODEL", "smollm2")  # autoglm-client's, not serve's --model
    with caplog.at_level(logging.WARNING):
        got = printed(capsys, *BASE)
    assert got["max_in_flight"] == (256, "default") and got["model"][0] == ["m=m:/tmp/m"]
    assert [r.getMessage() for r in caplog.records] == [
        "AUTOGLM_MAX_INFLIGHT is not a setting of autoglm serve; ignored"
        " (did you mean AUTOGLM_MAX_IN_FLIGHT?)"
    ]


def test_print_config_refuses_what_serve_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, 'listen = "0.0.0.0:50051"\ninsecure_dev = true\nmodel = ["m=m:/d"]')
    printing = run(capsys, "--config", str(config))
    serving = run(capsys, "--config", str(config), print_config=False)
    assert printing == serving == (
        2, "", "autoglm: error: insecure_dev: plaintext without tokens is only allowed on "
        "loopback, not '0.0.0.0'\n",
    )  # fmt: skip
    code, out, err = run(capsys, "--insecure-dev")
    assert (code, out) == (2, "") and "models: give --model or --model-repository" in err


def test_a_flag_added_later_has_its_forms(tmp_path: Path) -> None:
    """Nothing in settings_sources names a flag: a new one is read from file and environment."""
    parser = cli.build_parser()
    serve = settings_sources.subcommand(parser, "serve")
    serve.add_argument("--new-knob", type=int, default=1)
    opts = settings_sources.options(serve, skip=cli.NOT_SETTINGS)
    env, _ = settings_sources.from_env(opts, {"AUTOGLM_NEW_KNOB": "2"})
    file = settings_sources.from_toml(opts, "new-knob = 3", "f.toml")
    assert env["new_knob"].value == 2 and file["new_knob"].value == 3


def test_every_serve_flag_has_an_env_and_a_file_form() -> None:
    opts = settings_sources.options(serve_parser(), skip=cli.NOT_SETTINGS)
    for key, option in opts.items():
        assert option.env in (f"AUTOGLM_{key.upper()}", f"AUTOGLM_SERVE_{key.upper()}")
        assert option.env not in settings_sources.OTHER_VARIABLES
    assert opts["model"].env == "AUTOGLM_SERVE_MODEL"  # AUTOGLM_MODEL is autoglm-client's
    assert "--model → AUTOGLM_SERVE_MODEL" in " ".join(serve_parser().format_help().split())


def _subparsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, f"{path} {name}")


def test_every_flag_help_states_its_default() -> None:
    seen = set()
    for path, parser in _subparsers(cli.build_parser(), "autoglm"):
        text = parser.format_help()  # also: no %-formatting error in any help
        for action in parser._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue  # positionals, --help
            if action.required:
                continue  # no default to state
            assert action.help and "default" in action.help.lower(), (path, action.dest)
            seen.add(path.split()[1] if " " in path else path)
        if path in ("autoglm serve", "autoglm dev", "autoglm token create"):
            assert text.count("(default:") >= 5, path
    assert {"autoglm", "serve", "dev", "token", "model"} <= seen


def test_settings_has_no_catch_all_field() -> None:
    assert "extra" not in Settings.__dataclass_fields__


def test_gpu_sharing_flags_become_the_switch_policy(capsys: pytest.CaptureFixture[str]) -> None:
    base = ("--insecure-dev", "--model", "m=m:/d")
    args = serve_parser().parse_args([*base, "--reduced-kv-min-ratio", "0.5",
                                      "--gpu-runtime-overhead-gib", "3",
                                      "--switch-drain-timeout", "60"])  # fmt: skip
    assert cli_serve.switch_policy(args) == SwitchPolicy(0.9, 0.5, 3 * GIB, 60.0)
    assert cli_serve.switch_policy(serve_parser().parse_args(list(base))) == SwitchPolicy()
    # Refusals name the setting as the operator wrote it.
    for flag, value, message in (
        ("--reduced-kv-min-ratio", "1.5", "reduced_kv_min_ratio: 1.5 must be in (0, 1]"),
        ("--switch-drain-timeout", "0", "switch_drain_timeout: 0.0 must be > 0"),
    ):
        assert run(capsys, *base, flag, value) == (2, "", f"autoglm: error: {message}\n")
