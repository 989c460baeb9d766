"""Connection settings: one frozen object built from profile file, environment and arguments.

The profile file is the JSON that the server's `autoglm dev` command writes (keys `endpoint`,
`ca_cert`, `client_cert`, `client_key`, `token`, `model`), so a developer can point the client at
a dev server with no flags. It may also hold `insecure`, `timeout` and a `retry` object with any
of `RetryPolicy`'s fields (`{"retry": {"max_attempts": 5}}`). Precedence, lowest first: profile
file < `AUTOGLM_*` environment variables < explicit overrides. No I/O on the TLS files happens
here (see `_channel.py`).

The token is a secret: it is left out of `repr()` and out of every error message.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from autoglm.client._endpoint import is_loopback
from autoglm.client._exceptions import ConfigError
from autoglm.client._retry import RetryPolicy

__all__ = ["CONFIG_ENV", "ENV_VARS", "ClientConfig", "default_profile_path"]

CONFIG_ENV = "AUTOGLM_CLIENT_CONFIG"
"""Environment variable naming the profile file (else the XDG default is used)."""

ENV_VARS: Mapping[str, str] = {
    "endpoint": "AUTOGLM_ENDPOINT",
    "token": "AUTOGLM_TOKEN",
    "ca_cert": "AUTOGLM_CA_CERT",
    "client_cert": "AUTOGLM_CLIENT_CERT",
    "client_key": "AUTOGLM_CLIENT_KEY",
    "model": "AUTOGLM_MODEL",
}
"""Setting name -> environment variable that overrides the profile file."""

_PATH_KEYS = frozenset({"ca_cert", "client_cert", "client_key"})
_STR_KEYS = frozenset({"endpoint", "token", "server_name", "model"})


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to connect. Build it with `ClientConfig.load()` or directly.

    endpoint: gRPC target, e.g. "autoglm.example.com:443" or "127.0.0.1:50051".
    ca_cert: PEM bundle of the CA that signed the server certificate (None = system roots).
    client_cert, client_key: PEM certificate chain and key for mTLS; both or neither.
    token: bearer token sent as `authorization: Bearer <token>` on every call.
    server_name: TLS name to verify instead of the endpoint host (`grpc.ssl_target_name_override`).
    insecure: plaintext, allowed for loopback endpoints only.
    model: default model for calls that do not name one.
    timeout: default deadline of every call, in seconds (None = no deadline); it bounds the
        call's retries too.
    retry: how calls are retried after UNAVAILABLE; `RetryPolicy(max_attempts=1)` = never.
    """

    endpoint: str
    ca_cert: Path | None
    client_cert: Path | None
    client_key: Path | None
    token: str | None = field(repr=False)
    server_name: str | None = None
    insecure: bool = False
    model: str | None = None
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint, str) or not self.endpoint.strip():
            raise ConfigError("endpoint is empty")
        for name in _PATH_KEYS:
            value = getattr(self, name)
            if isinstance(value, str):  # accept str for convenience, store Path
                object.__setattr__(self, name, Path(value).expanduser())
        if (self.client_cert is None) != (self.client_key is None):
            have, missing = ("client_cert", "client_key")
            if self.client_cert is None:
                have, missing = missing, have
            raise ConfigError(f"{have} is set but {missing} is not: mTLS needs both")
        if self.token is not None and not isinstance(self.token, str):
            raise ConfigError("token must be a string")  # never echo the value
        if self.insecure and not is_loopback(self.endpoint):
            raise ConfigError(
                f"insecure (plaintext) connections are only allowed to loopback endpoints "
                f"(localhost, 127.0.0.0/8, ::1), not {self.endpoint!r}: use TLS"
            )
        if self.timeout is not None and not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")

    def __repr__(self) -> str:
        # Spelled out so that the token's *presence* is visible while its value never is.
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "token"
        )
        return f"ClientConfig({shown}, token={'<set>' if self.token else None})"

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> ClientConfig:
        """Settings from the profile file, then `AUTOGLM_*` variables, then `overrides`.

        The profile file is `path`, else `$AUTOGLM_CLIENT_CONFIG`, else
        `$XDG_CONFIG_HOME/autoglm/client.json` (default `~/.config/autoglm/client.json`); only
        that last default may be missing. Relative paths in the file resolve against its folder.
        An override of None means "not given" (so CLI flags can be passed through unchanged);
        empty environment variables count as unset.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown ClientConfig setting(s): {', '.join(unknown)}")

        profile, required = _profile_location(path)
        values: dict[str, Any] = _read_profile(profile, required=required)
        values.update(_from_env())
        values.update({k: v for k, v in overrides.items() if v is not None})

        if not values.get("endpoint"):
            where = f"the profile {profile}" if profile.is_file() else f"a profile ({profile})"
            raise ConfigError(
                f"no endpoint: set 'endpoint' in {where}, set {ENV_VARS['endpoint']}, "
                f"or pass endpoint="
            )
        for name in ("ca_cert", "client_cert", "client_key", "token"):
            values.setdefault(name, None)
        return cls(**values)


def default_profile_path() -> Path:
    """`$XDG_CONFIG_HOME/autoglm/client.json`, else `~/.config/autoglm/client.json`."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "autoglm" / "client.json"


def _profile_location(path: str | Path | None) -> tuple[Path, bool]:
    """The profile file to read and whether it must exist (it must when named explicitly)."""
    if path is not None:
        return Path(path).expanduser(), True
    from_env = os.environ.get(CONFIG_ENV, "")
    if from_env:
        return Path(from_env).expanduser(), True
    return default_profile_path(), False


def _read_profile(path: Path, *, required: bool) -> dict[str, Any]:
    """The settings of a profile file, typed and with paths resolved against its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"profile file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read profile file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg/lineno only: the message must not quote the file, which holds the token.
        raise ConfigError(
            f"profile file {path} is not valid JSON: {exc.msg} (line {exc.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"profile file {path} must hold a JSON object")

    values: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        if key in _STR_KEYS:
            if not isinstance(value, str):
                raise ConfigError(f"profile file {path}: {key!r} must be a string")
            values[key] = value
        elif key in _PATH_KEYS:
            if not isinstance(value, str):
                raise ConfigError(f"profile file {path}: {key!r} must be a path string")
            values[key] = path.parent / Path(value).expanduser()  # absolute paths stay as they are
        elif key == "insecure":
            if not isinstance(value, bool):
                raise ConfigError(f"profile file {path}: 'insecure' must be true or false")
            values[key] = value
        elif key == "timeout":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"profile file {path}: 'timeout' must be a number of seconds")
            values[key] = float(value)
        elif key == "retry":
            values[key] = _retry_policy(path, value)
        # Other keys are ignored: newer `autoglm dev` versions may write more than we read.
    return values


def _retry_policy(path: Path, value: object) -> RetryPolicy:
    """The profile's `retry` object; unlike top-level keys, unknown ones are errors here, since
    this object is written by hand and a misspelt key would silently keep the default."""
    if not isinstance(value, dict):
        raise ConfigError(f"profile file {path}: 'retry' must be a JSON object")
    known = {f.name for f in fields(RetryPolicy)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(
            f"profile file {path}: unknown retry setting(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    try:
        return RetryPolicy(**{k: v for k, v in value.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(f"profile file {path}: {exc.message}") from None


def _from_env() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, var in ENV_VARS.items():
        value = os.environ.get(var, "")
        if value:
            values[name] = Path(value).expanduser() if name in _PATH_KEYS else value
    return values
