"""settings_sources: flag > AUTOGLM_* > TOML file > default, on a parser shaped like serve's
(every kind of flag it has: int, float, switch, path, repeatable, choices)."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from autoglm.server.settings_sources import (
    OTHER_VARIABLES,
    REDACTED,
    ConfigError,
    Value,
    from_env,
    from_toml,
    given_on_command_line,
    note_defaults,
    options,
    render_toml,
    resolve,
    subcommand,
    toml_value,
)

FILE = "/etc/autoglm/serve.toml"
TOKEN = "agm_0123456789ab_" + "x" * 43  # the bearer-token format of bearer_tokens.py


def build() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="autoglm")
    top.add_argument("--home", type=Path, default=Path("/h"))
    sub = top.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--config", type=Path)
    s.add_argument("--max-in-flight", type=int, default=256)
    s.add_argument("--grace", type=float, default=10.0)
    s.add_argument("--insecure-dev", action="store_true")
    s.add_argument("--audit-dir", type=Path)
    s.add_argument("--profile", action="append", default=[])
    s.add_argument("--reader", choices=("a", "b", "c", "d"), default="d")
    s.add_argument("--listen", default="127.0.0.1:50051")
    s.add_argument("--model", action="append", default=[])  # AUTOGLM_MODEL is the client's
    s.add_argument("--triton-secret-file", type=Path)  # where a secret is: shown
    s.add_argument("--admin-token")  # a secret's content: never shown
    s.add_argument("--max-tokens-per-request", type=int, default=4096)  # the model's tokens
    sub.add_parser("dev").add_argument("--port", type=int, default=50051)
    return top


def opts() -> dict[str, Any]:
    return options(subcommand(build(), "serve"), skip=("config",))


def layered(
    argv: list[str], environ: dict[str, str] | None = None, toml: str | None = None
) -> dict[str, Value]:
    top = build()
    serve = subcommand(top, "serve")
    o = options(serve, skip=("config",))
    args = top.parse_args(["serve", *argv])
    env, _ = from_env(o, environ or {})
    file = from_toml(o, toml, FILE) if toml is not None else {}
    given = given_on_command_line(top, serve, ["serve", *argv])
    return resolve(o, vars(args), given, env, file)


# key: (flag argv, env text, TOML value, then the value each source yields, and the default)
CASES: dict[str, tuple[list[str], str, str, Any, Any, Any, Any]] = {
    "max_in_flight": (["--max-in-flight", "3"], "4", "5", 3, 4, 5, 256),
    "grace": (["--grace", "1.5"], "2.5", "3", 1.5, 2.5, 3.0, 10.0),
    "insecure_dev": (["--insecure-dev"], "no", "true", True, False, True, False),
    "audit_dir": (["--audit-dir", "/f"], "/e", '"/t"', Path("/f"), Path("/e"), Path("/t"), None),
    "profile": (
        ["--profile", "p1", "--profile", "p2"],
        "e1, e2",
        '["t1"]',
        ["p1", "p2"],
        ["e1", "e2"],
        ["t1"],
        [],
    ),
    "reader": (["--reader", "a"], "b", '"c"', "a", "b", "c", "d"),
}


@pytest.mark.parametrize("key", list(CASES))
def test_precedence_flag_env_file_default(key: str) -> None:
    argv, env_text, toml_text, by_flag, by_env, by_file, default = CASES[key]
    env = {"AUTOGLM_" + key.upper(): env_text}
    toml = f"{key} = {toml_text}\n"
    assert layered(argv, env, toml)[key] == Value(by_flag, "flag")
    assert layered([], env, toml)[key] == Value(by_env, f"env AUTOGLM_{key.upper()}")
    assert layered([], {}, toml)[key] == Value(by_file, f"file {FILE}")
    assert layered([], {}, None)[key] == Value(default, "default")


def test_a_flag_equal_to_its_default_still_wins() -> None:
    got = layered(["--max-in-flight", "256"], {"AUTOGLM_MAX_IN_FLIGHT": "4"})
    assert got["max_in_flight"] == Value(256, "flag")


def test_the_other_settings_keep_their_own_sources() -> None:
    got = layered(["--grace", "1"], {"AUTOGLM_MAX_IN_FLIGHT": "4"}, 'listen = "0.0.0.0:1"')
    assert {k: v.source for k, v in got.items() if v.source != "default"} == {
        "grace": "flag",
        "max_in_flight": "env AUTOGLM_MAX_IN_FLIGHT",
        "listen": f"file {FILE}",
    }


def test_top_level_options_and_other_subcommands_are_not_settings() -> None:
    assert "home" not in opts() and "port" not in opts() and "config" not in opts()
    assert layered(["--config", "/x.toml"])["max_in_flight"].source == "default"


def test_dashed_keys_are_the_same_keys() -> None:
    got = layered([], {}, "max-in-flight = 7\ninsecure-dev = true")
    assert got["max_in_flight"].value == 7 and got["insecure_dev"].value is True
    with pytest.raises(ConfigError, match="'max_in_flight' and 'max-in-flight' are the same key"):
        from_toml(opts(), "max_in_flight = 1\nmax-in-flight = 2", FILE)


def test_switches_accept_the_usual_words() -> None:
    for text, on in [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False),
                     ("false", False), ("No", False), ("off", False)]:  # fmt: skip
        values, _ = from_env(opts(), {"AUTOGLM_INSECURE_DEV": text})
        assert values["insecure_dev"].value is on, text


def test_env_lists_split_on_commas_and_may_be_empty() -> None:
    values, _ = from_env(opts(), {"AUTOGLM_PROFILE": " a ,b,, c"})
    assert values["profile"].value == ["a", "b", "c"]
    values, _ = from_env(opts(), {"AUTOGLM_PROFILE": ""})  # set and empty: no profiles
    assert values["profile"].value == []


def test_an_empty_env_value_is_a_value() -> None:
    """`--metrics-listen ''` means off; so does AUTOGLM_METRICS_LISTEN=''."""
    values, _ = from_env(opts(), {"AUTOGLM_LISTEN": ""})
    assert values["listen"].value == ""


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("max_in_flights = 3", f"{FILE}: unknown key 'max_in_flights': not a setting of autoglm "
         "serve (did you mean max_in_flight?)"),
        ("zzz = 3", f"{FILE}: unknown key 'zzz': not a setting of autoglm serve"),
        ("config = '/other.toml'", "unknown key 'config'"),
        ("max_in_flight = 'lots'", f"max_in_flight in {FILE}: invalid int value: 'lots'"),
        ("max_in_flight = 2.5", f"max_in_flight in {FILE}: invalid int value: '2.5'"),
        ("max_in_flight = true", f"max_in_flight in {FILE}: expected a string or a number"),
        ("grace = 'soon'", f"grace in {FILE}: invalid float value: 'soon'"),
        ("reader = 'e'", f"reader in {FILE}: must be one of a, b, c, d, got 'e'"),
        ("reader = 1", f"reader in {FILE}: expected a string, got int 1"),
        ("insecure_dev = 'true'", f"insecure_dev in {FILE}: expected true or false"),
        ("profile = 'p1'", f"profile in {FILE}: expected an array"),
        ("profile = ['p1', 2]", f"profile[1] in {FILE}: expected a string, got int 2"),
        ("listen = [1]", f"listen in {FILE}: expected a string, got list"),
        ("[serve]\nlisten = 'x'", f"{FILE}: unknown key 'serve'"),
        ("max_in_flight = ", f"{FILE}: not valid TOML: Invalid value (at end of document)"),
    ],
)  # fmt: skip
def test_file_errors_name_the_key_and_the_file(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_toml(opts(), toml, FILE)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("AUTOGLM_MAX_IN_FLIGHT", "x", "AUTOGLM_MAX_IN_FLIGHT: invalid int value: 'x'"),
        ("AUTOGLM_INSECURE_DEV", "maybe", "AUTOGLM_INSECURE_DEV: 'maybe' is not a boolean"),
        ("AUTOGLM_READER", "z", "AUTOGLM_READER: must be one of a, b, c, d, got 'z'"),
    ],
)
def test_env_errors_name_the_variable(name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_env(opts(), {name: text})


def test_an_error_never_shows_a_secret_value() -> None:
    top = build()
    serve = subcommand(top, "serve")
    serve.add_argument("--api-key", type=str.lower, choices=("a",))
    o = options(serve, skip=("config",))
    with pytest.raises(ConfigError) as err:
        from_env(o, {"AUTOGLM_API_KEY": "hunter2"})
    assert "hunter2" not in str(err.value) and "AUTOGLM_API_KEY" in str(err.value)
    with pytest.raises(ConfigError) as err:
        from_toml(o, "api_key = ['hunter2']", FILE)
    assert "hunter2" not in str(err.value)


def test_unknown_env_variables_warn_and_others_are_left_alone() -> None:
    values, warnings = from_env(
        opts(),
        {
            "AUTOGLM_MAX_INFLIGHT": "3",  # a typo
            "AUTOGLM_HOME": "/h",  # autoglm's, not serve's
            "AUTOGLM_MODEL": "smollm2",  # the client's default model
            "AUTOGLM_TOKEN": TOKEN,
            "PATH": "/bin",
            "MAX_IN_FLIGHT": "9",
        },
    )
    assert values == {}
    assert warnings == [
        "AUTOGLM_MAX_INFLIGHT is not a setting of autoglm serve; ignored"
        " (did you mean AUTOGLM_MAX_IN_FLIGHT?)"
    ]


def test_a_flag_whose_env_name_is_taken_gets_the_serve_prefix() -> None:
    o = opts()
    assert o["model"].env == "AUTOGLM_SERVE_MODEL" and o["grace"].env == "AUTOGLM_GRACE"
    values, warnings = from_env(o, {"AUTOGLM_SERVE_MODEL": "m=m:/d", "AUTOGLM_MODEL": "x"})
    assert values["model"] == Value(["m=m:/d"], "env AUTOGLM_SERVE_MODEL") and not warnings


def test_other_variables_cover_the_clients() -> None:
    from autoglm.client._config import CONFIG_ENV, ENV_VARS

    assert {CONFIG_ENV, *ENV_VARS.values(), "AUTOGLM_HOME"} <= set(OTHER_VARIABLES)


# --- showing -----------------------------------------------------------------------------------


def test_print_form_reads_back_as_the_same_settings() -> None:
    got = layered(
        ["--profile", 'a"b\\c', "--grace", "0.25", "--insecure-dev"],
        {"AUTOGLM_AUDIT_DIR": "/var/audit ü"},
        "max_in_flight = 9\nreader = 'b'",
    )
    text = render_toml(opts(), got)
    again = from_toml(opts(), text, "printed")
    assert {k: v.value for k, v in again.items()} == {
        k: v.value for k, v in got.items() if v.value is not None
    }
    assert "max_in_flight = 9                             # file /etc/autoglm/serve.toml" in text
    assert "# admin_token = <unset>" in text and "insecure_dev = true" in text


def _pem_key_first_line() -> str:
    """The first line of a private key made now (no key material lives in the repository)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode().splitlines()[0]


def test_secrets_are_redacted_paths_to_them_are_not() -> None:
    key_line = _pem_key_first_line()
    got = layered(
        ["--admin-token", "hunter2", "--triton-secret-file", "/run/secret"],
        {"AUTOGLM_LISTEN": f"Bearer {TOKEN}"},  # a token's content in a harmless-named setting
        f'profile = ["{TOKEN}", "{key_line}"]',
    )
    text = render_toml(opts(), got)
    for secret in ("hunter2", TOKEN, key_line):
        assert secret not in text
    lines = {line.split(" = ")[0].lstrip("# "): line for line in text.splitlines()[2:]}
    assert lines["admin_token"].startswith(f"# admin_token = {REDACTED}")
    assert lines["admin_token"].endswith("# flag")
    assert lines["listen"].startswith("# listen = <redacted>")
    assert lines["profile"].startswith("# profile = <redacted>")
    assert lines["triton_secret_file"].startswith('triton_secret_file = "/run/secret"')
    assert lines["max_tokens_per_request"].startswith("max_tokens_per_request = 4096")
    tomllib.loads(text)  # still a TOML file


def test_toml_values() -> None:
    assert toml_value('q"\\\n\x7f') == '"q\\"\\\\\\n\\u007f"'
    assert tomllib.loads(f"v = {toml_value(chr(127) + 'é')}")["v"] == "\x7fé"
    assert [toml_value(v) for v in (True, 3, 2.0, float("inf"), Path("/p"), ["a", 1])] == [
        "true", "3", "2.0", "inf", '"/p"', '["a", 1]'
    ]  # fmt: skip


# --- help --------------------------------------------------------------------------------------


def test_note_defaults() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--said", default="x", help="has one (default: x)")
    p.add_argument("--pct", default="5%", help="share")
    p.add_argument("--must", required=True)
    p.add_argument("--on", action="store_true", help="a switch")
    p.add_argument("--many", action="append", default=[])
    p.add_argument("pos")
    sub = p.add_subparsers()
    sub.add_parser("x").add_argument("--deep", type=Path)
    note_defaults(p)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["n"] == "(default: 3)"
    assert helps["said"] == "has one (default: x)"
    assert helps["pct"] == "share (default: 5%%)"
    assert helps["must"] is None and helps["pos"] is None
    assert helps["on"] == "a switch (default: off)" and helps["many"] == "(default: none)"
    assert "(default: 5%)" in p.format_help()
    assert "(default: none)" in subcommand(p, "x").format_help()
