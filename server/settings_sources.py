"""Where `autoglm serve`'s settings come from: flags > `AUTOGLM_*` variables > a TOML file
(`--config`) > the flags' defaults.

One declaration per setting: the serve parser's own argparse actions. An action's dest names
its TOML key (`--max-in-flight` → `max_in_flight`; `max-in-flight` is read as the same key) and
its environment variable (`AUTOGLM_MAX_IN_FLIGHT`), and a value from the file or the environment
goes through the flag's own `type=` and `choices`. A flag added to the parser therefore has its
file and environment forms with nothing else to write.

Forms by kind of flag:
    switch (store_true)   TOML true/false; env 1/0, true/false, yes/no, on/off
    repeatable (append)   TOML array of strings; env items separated by commas
    value                 TOML string or number; env text — both through `type=`/`choices`
A repeated flag given on the command line replaces the environment's or the file's list
(precedence, not concatenation).

Pure apart from argparse: the caller (cli_serve.py) reads the file and the environment and hands
their contents in, and logs the warnings returned here.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal

from autoglm.server.telemetry.logs import redact

ENV_PREFIX = "AUTOGLM_"
# Used when AUTOGLM_<DEST> is already someone else's name (OTHER_VARIABLES).
SERVE_ENV_PREFIX = "AUTOGLM_SERVE_"

# `AUTOGLM_*` names that are not serve's flags: never read as serve settings, never warned
# about. The client's names are its `CONFIG_ENV` and `ENV_VARS` (client/_config.py; a test keeps
# this list complete). A flag whose AUTOGLM_<DEST> is one of these gets AUTOGLM_SERVE_<DEST>.
OTHER_VARIABLES: Mapping[str, str] = {
    "AUTOGLM_HOME": "autoglm's state folder (--home)",
    "AUTOGLM_CONFIG": "the settings file of autoglm serve (--config)",
    "AUTOGLM_CLIENT_CONFIG": "autoglm-client's profile file",
    "AUTOGLM_ENDPOINT": "autoglm-client's endpoint",
    "AUTOGLM_TOKEN": "autoglm-client's bearer token",
    "AUTOGLM_CA_CERT": "autoglm-client's CA",
    "AUTOGLM_CLIENT_CERT": "autoglm-client's certificate",
    "AUTOGLM_CLIENT_KEY": "autoglm-client's key",
    "AUTOGLM_MODEL": "autoglm-client's default model",
    "AUTOGLM_MODEL_DIR": "the tests' model folder (tests/conftest.py)",
    "AUTOGLM_TRITON_ARGS": "the Triton pod's entrypoint (deploy/k8s)",
}

FLAG, DEFAULT = "flag", "default"
Kind = Literal["switch", "list", "value"]

# Words of a dest that say the value may be a secret's content. Not "tokens": here that word
# counts the model's tokens (--max-tokens-per-request); a bearer token is "token".
_SECRET_WORDS = frozenset(
    {
        "secret", "secrets", "token", "password", "passwd", "passphrase", "key", "keys",
        "credential", "credentials", "auth", "authorization", "header", "headers", "cookie",
    }
)  # fmt: skip
# A path names where a secret is (--triton-secret-file, --tls-key), fine to show; a number is
# never a secret's content.
_NEVER_SECRET_TYPES = (PurePath, int, float)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
REDACTED = "<redacted>"


class ConfigError(ValueError):
    """A file, key or value that cannot be used; the message names the key or the variable and
    where it came from."""


@dataclass(frozen=True, slots=True)
class Option:
    """One serve flag, seen as a setting."""

    action: argparse.Action
    env: str

    @property
    def key(self) -> str:
        return self.action.dest

    @property
    def flag(self) -> str:
        return max(self.action.option_strings, key=len)

    @property
    def kind(self) -> Kind:
        if self.action.nargs == 0:
            return "switch"
        if isinstance(self.action, argparse._AppendAction) or self.action.nargs in ("*", "+"):
            return "list"
        return "value"

    @property
    def secret(self) -> bool:
        """True when the value may be a secret's content (never shown)."""
        t = self.action.type
        if isinstance(t, type) and issubclass(t, _NEVER_SECRET_TYPES):
            return False
        return bool(_SECRET_WORDS & set(self.key.lower().split("_")))


@dataclass(frozen=True, slots=True)
class Value:
    value: Any
    source: str  # "flag", "env AUTOGLM_X", "file PATH" or "default"


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subparser `name` of `parser` (`autoglm serve`'s parser from `autoglm`'s)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise KeyError(name)


def options(parser: argparse.ArgumentParser, *, skip: Collection[str] = ()) -> dict[str, Option]:
    """Every optional flag of `parser` as a setting, by key (its dest); `skip`: dests that are no
    settings (--config itself)."""
    out: dict[str, Option] = {}
    for action in parser._actions:
        if (
            not action.option_strings
            or action.dest in skip
            or action.default is argparse.SUPPRESS  # --help, --version
        ):
            continue
        env = ENV_PREFIX + action.dest.upper()
        if env in OTHER_VARIABLES:
            env = SERVE_ENV_PREFIX + action.dest.upper()
        out[action.dest] = Option(action, env)
    return out


def given_on_command_line(
    parser: argparse.ArgumentParser, sub: argparse.ArgumentParser, argv: Sequence[str]
) -> set[str]:
    """The dests of `sub` that `argv` gives explicitly (a flag equal to its default counts).

    argparse fills defaults before parsing; with the defaults of `sub` suppressed for one parse,
    only what the command line set is left in the namespace."""
    saved = [(a, a.default) for a in sub._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
    return {a.dest for a, _ in saved if hasattr(namespace, a.dest)}


# --- reading values ----------------------------------------------------------------------------


def _shown(option: Option, value: object) -> str:
    return "(a secret: not shown)" if option.secret else repr(value)


def _convert(option: Option, text: str, where: str) -> Any:
    """`text` through the flag's own `type=` and `choices`, as argparse would."""
    action = option.action
    convert = action.type if callable(action.type) else str
    try:
        value = convert(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        name = getattr(convert, "__name__", repr(convert))
        raise ConfigError(f"{where}: invalid {name} value: {_shown(option, text)}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: must be one of {choices}, got {_shown(option, value)}")
    return value


def _switch(option: Option, on: bool) -> Any:
    # store_true: const True, default False (store_false the other way round).
    return option.action.const if on else option.action.default


def _from_text(option: Option, text: str, where: str) -> Any:
    if option.kind == "switch":
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ConfigError(
                f"{where}: {_shown(option, text)} is not a boolean (1/0, true/false, yes/no)"
            )
        return _switch(option, word in _TRUE)
    if option.kind == "list":
        return [_convert(option, item.strip(), where) for item in text.split(",") if item.strip()]
    return _convert(option, text, where)


def _toml_scalar(option: Option, raw: object, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float) or option.action.type is None:
        wanted = "a string" if option.action.type is None else "a string or a number"
        got = f"{type(raw).__name__} {_shown(option, raw)}"
        raise ConfigError(f"{where}: expected {wanted}, got {got}")
    return str(raw)


def _from_toml(option: Option, raw: object, key: str, origin: str) -> Any:
    where = f"{key} in {origin}"
    if option.kind == "switch":
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: expected true or false, got {_shown(option, raw)}")
        return _switch(option, raw)
    if option.kind == "list":
        if not isinstance(raw, list):
            raise ConfigError(f'{where}: expected an array, e.g. ["a", "b"]')
        items = [(f"{key}[{i}] in {origin}", item) for i, item in enumerate(raw)]
        return [_convert(option, _toml_scalar(option, item, at), at) for at, item in items]
    return _convert(option, _toml_scalar(option, raw, where), where)


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def from_env(
    opts: Mapping[str, Option], environ: Mapping[str, str]
) -> tuple[dict[str, Value], list[str]]:
    """Values of the `AUTOGLM_*` variables that name settings, and a warning for each
    `AUTOGLM_*` variable that names none (a typo; it is ignored)."""
    by_env = {o.env: o for o in opts.values()}
    values: dict[str, Value] = {}
    warnings: list[str] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
            continue
        option = by_env.get(name)
        if option is None:
            warnings.append(
                f"{name} is not a setting of autoglm serve; ignored{_suggest(name, by_env)}"
            )
            continue
        values[option.key] = Value(_from_text(option, environ[name], name), f"env {name}")
    return values, warnings


def from_toml(opts: Mapping[str, Option], text: str, origin: str) -> dict[str, Value]:
    """Values of a TOML settings file (flat: one key per flag); `origin` names the file in
    errors and in the values' source."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    values: dict[str, Value] = {}
    spelled: dict[str, str] = {}
    for raw_key, raw in data.items():
        key = raw_key.replace("-", "_")
        option = opts.get(key)
        if option is None:
            raise ConfigError(
                f"{origin}: unknown key {raw_key!r}: not a setting of autoglm serve"
                f"{_suggest(key, opts)}"
            )
        if key in spelled:
            raise ConfigError(f"{origin}: {spelled[key]!r} and {raw_key!r} are the same key")
        spelled[key] = raw_key
        values[key] = Value(_from_toml(option, raw, raw_key, origin), f"file {origin}")
    return values


def resolve(
    opts: Mapping[str, Option],
    parsed: Mapping[str, Any],
    given: Collection[str],
    env: Mapping[str, Value],
    file: Mapping[str, Value],
) -> dict[str, Value]:
    """Each setting from the first source that has it: flag > environment > file > default.

    `parsed`: the namespace of the ordinary parse (the flags' values, and the defaults already
    converted by argparse); `given`: the keys the command line set."""
    out: dict[str, Value] = {}
    for key in opts:
        if key in given:
            out[key] = Value(parsed[key], FLAG)
        elif key in env:
            out[key] = env[key]
        elif key in file:
            out[key] = file[key]
        else:
            out[key] = Value(parsed[key], DEFAULT)
    return out


# --- showing values ----------------------------------------------------------------------------


def holds_secret(option: Option, value: Any) -> bool:
    """True when `value` must not be shown: the option's name says it may be a secret, or the
    value looks like one (a bearer token or credential, per the log redaction; PEM material)."""
    if option.secret:
        return True
    items = value if isinstance(value, list | tuple) else [value]
    return any(
        isinstance(item, str) and ("-----BEGIN" in item or redact(item) != item) for item in items
    )


def _toml_string(text: str) -> str:
    # JSON's escapes (\" \\ \n \t \uXXXX) are TOML basic-string escapes too; DEL must be escaped
    # in TOML (spec: "basic strings"), which JSON leaves alone.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def render_toml(opts: Mapping[str, Option], resolved: Mapping[str, Value]) -> str:
    """The effective settings as a TOML file `--config` takes back, each line's source as a
    comment. Unset values and secrets are commented out (TOML has no null; a secret is given
    again by its own means)."""
    lines = [
        "# autoglm serve: the effective settings (flag > environment > file > default).",
        "# Reusable as `autoglm serve --config FILE`; unset values and secrets commented out.",
    ]
    for key, option in opts.items():
        value = resolved[key]
        if value.value is None:
            line = f"# {key} = <unset>"
        elif holds_secret(option, value.value):
            line = f"# {key} = {REDACTED}"
        else:
            line = f"{key} = {toml_value(value.value)}"
        lines.append(f"{line:<44}  # {value.source}")
    return "\n".join(lines) + "\n"


def forms_epilog(opts: Mapping[str, Option]) -> str:
    """The serve help's note on the environment and file forms, from the options themselves."""
    renamed = [f"{o.flag} → {o.env}" for o in opts.values() if o.env.startswith(SERVE_ENV_PREFIX)]
    return (
        "Every flag can also be set in the environment, AUTOGLM_<FLAG> (--max-in-flight → "
        "AUTOGLM_MAX_IN_FLIGHT; switches 1/0, true/false, yes/no; repeatable flags: items "
        "separated by commas), or as a key of the --config TOML file (max_in_flight = 256; "
        "arrays for repeatable flags). Precedence: flag > environment > file > default. "
        + (
            f"Where AUTOGLM_<FLAG> belongs to another program: {', '.join(renamed)}. "
            if renamed
            else ""
        )
        + "--print-config shows the result."
    )


# --- help --------------------------------------------------------------------------------------


def describe_default(value: Any) -> str:
    if value is None or value == [] or value == ():
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "''"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def note_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default: …)" to the help of every optional flag of `parser` and of its
    subcommands whose help does not already say its default (argparse's
    ArgumentDefaultsHelpFormatter skips flags without help, and would print None and [])."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                note_defaults(sub)
            continue
        if (
            not action.option_strings
            or action.required
            or action.help is argparse.SUPPRESS
            or action.default is argparse.SUPPRESS
            or (action.help is not None and "default" in action.help.lower())
        ):
            continue
        # argparse %-formats help text: a literal % must be doubled.
        note = f"(default: {describe_default(action.default)})".replace("%", "%%")
        action.help = f"{action.help} {note}" if action.help else note
