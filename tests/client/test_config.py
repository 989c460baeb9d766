"""ClientConfig.load: precedence file < env < overrides, path resolution, clear errors, and a
token that never shows up in repr() or error text."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm.client import ClientConfig, ConfigError
from autoglm.client._config import default_profile_path
from tests.client.conftest import TOKEN

DEV_PROFILE = {
    "endpoint": "127.0.0.1:50051",
    "ca_cert": "ca.pem",
    "client_cert": "certs/client.pem",
    "client_key": "certs/client.key",
    "token": TOKEN,
    "model": "smollm2",
}


def test_profile_file_relative_paths_resolve_against_its_folder(
    write_profile: Callable[..., Path],
) -> None:
    path = write_profile(DEV_PROFILE)
    config = ClientConfig.load(path)
    assert config.endpoint == "127.0.0.1:50051"
    assert config.ca_cert == path.parent / "ca.pem"
    assert config.client_cert == path.parent / "certs" / "client.pem"
    assert config.client_key == path.parent / "certs" / "client.key"
    assert config.token == TOKEN
    assert config.model == "smollm2"
    assert config.insecure is False and config.server_name is None and config.timeout is None


def test_absolute_paths_in_profile_stay(write_profile: Callable[..., Path], tmp_path: Path) -> None:
    ca = tmp_path / "elsewhere" / "ca.pem"
    config = ClientConfig.load(write_profile({**DEV_PROFILE, "ca_cert": str(ca)}))
    assert config.ca_cert == ca


def test_env_var_names_the_profile(
    write_profile: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_CLIENT_CONFIG", str(write_profile(DEV_PROFILE)))
    assert ClientConfig.load().model == "smollm2"


def test_xdg_default_profile(write_profile: Callable[..., Path], clean_env: Path) -> None:
    write_profile(DEV_PROFILE, clean_env / "autoglm" / "client.json")
    assert default_profile_path() == clean_env / "autoglm" / "client.json"
    assert ClientConfig.load().endpoint == "127.0.0.1:50051"


def test_home_default_when_xdg_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_profile_path() == tmp_path / ".config" / "autoglm" / "client.json"


def test_explicit_path_beats_env_path(
    write_profile: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_profile = write_profile({"endpoint": "localhost:1"}, tmp_path / "env.json")
    monkeypatch.setenv("AUTOGLM_CLIENT_CONFIG", str(env_profile))
    explicit = write_profile({"endpoint": "localhost:2"}, tmp_path / "explicit.json")
    assert ClientConfig.load(explicit).endpoint == "localhost:2"


def test_precedence_file_then_env_then_overrides(
    write_profile: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_profile(DEV_PROFILE)
    monkeypatch.setenv("AUTOGLM_ENDPOINT", "localhost:7000")
    monkeypatch.setenv("AUTOGLM_MODEL", "from-env")
    monkeypatch.setenv("AUTOGLM_TOKEN", "env-token")
    monkeypatch.setenv("AUTOGLM_CA_CERT", "rel/ca.pem")  # env paths are relative to the cwd
    monkeypatch.setenv("AUTOGLM_CLIENT_CERT", str(tmp_path / "c.pem"))
    monkeypatch.setenv("AUTOGLM_CLIENT_KEY", str(tmp_path / "c.key"))
    config = ClientConfig.load(path, model="from-arg", endpoint=None, timeout=5)
    assert config.endpoint == "localhost:7000"  # env beats file; an override of None is unset
    assert config.model == "from-arg"  # explicit beats env
    assert config.token == "env-token"
    assert config.ca_cert == Path("rel/ca.pem")
    assert config.client_cert == tmp_path / "c.pem"
    assert config.client_key == tmp_path / "c.key"
    assert config.timeout == 5


def test_empty_env_var_counts_as_unset(
    write_profile: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_MODEL", "")
    assert ClientConfig.load(write_profile(DEV_PROFILE)).model == "smollm2"


def test_no_profile_env_and_overrides_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_ENDPOINT", "localhost:50051")
    config = ClientConfig.load(insecure=True)
    assert config.endpoint == "localhost:50051" and config.insecure
    assert config.ca_cert is None and config.token is None


def test_unknown_profile_keys_are_ignored(write_profile: Callable[..., Path]) -> None:
    config = ClientConfig.load(write_profile({**DEV_PROFILE, "written_by": "autoglm dev 9"}))
    assert config.endpoint == "127.0.0.1:50051"


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="endpiont"):
        ClientConfig.load(endpiont="localhost:1")


def test_no_endpoint_names_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="no endpoint") as info:
        ClientConfig.load()
    assert "AUTOGLM_ENDPOINT" in str(info.value)


def test_explicit_profile_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ClientConfig.load(tmp_path / "missing.json")


def test_env_named_profile_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOGLM_CLIENT_CONFIG", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="does not exist"):
        ClientConfig.load()


def test_invalid_json_error_does_not_quote_the_file(tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    path.write_text('{"endpoint": "localhost:1", "token": "' + TOKEN + '",}')
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        ClientConfig.load(path)
    assert TOKEN not in str(info.value)


def test_profile_must_be_an_object(write_profile: Callable[..., Path], tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[]")
    with pytest.raises(ConfigError, match="JSON object"):
        ClientConfig.load(path)


@pytest.mark.parametrize(
    ("key", "value"), [("token", 123), ("endpoint", ["x"]), ("insecure", "yes"), ("timeout", "9")]
)
def test_wrongly_typed_profile_value(
    write_profile: Callable[..., Path], key: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=repr(key)):
        ClientConfig.load(write_profile({**DEV_PROFILE, key: value}))


@pytest.mark.parametrize(
    ("given", "missing"), [("client_cert", "client_key"), ("client_key", "client_cert")]
)
def test_cert_without_key(write_profile: Callable[..., Path], given: str, missing: str) -> None:
    profile = {k: v for k, v in DEV_PROFILE.items() if k != missing}
    with pytest.raises(ConfigError, match=f"{given} is set but {missing} is not"):
        ClientConfig.load(write_profile(profile))


def test_empty_endpoint() -> None:
    with pytest.raises(ConfigError, match="endpoint is empty"):
        ClientConfig(" ", None, None, None, None)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_bad_timeout(timeout: float) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        ClientConfig("localhost:1", None, None, None, None, timeout=timeout)


def test_str_paths_become_paths() -> None:
    config = ClientConfig("localhost:1", "ca.pem", "c.pem", "c.key", None)  # type: ignore[arg-type]
    assert config.ca_cert == Path("ca.pem") and config.client_key == Path("c.key")


def test_frozen() -> None:
    config = ClientConfig("localhost:1", None, None, None, TOKEN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.token = "other"  # type: ignore[misc]


def test_token_not_in_repr_or_str(write_profile: Callable[..., Path]) -> None:
    config = ClientConfig.load(write_profile(DEV_PROFILE))
    assert TOKEN not in repr(config)
    assert TOKEN not in str(config)
    assert "token=<set>" in repr(config)
    assert "smollm2" in repr(config)  # the rest is still shown, for debugging


def test_token_not_in_any_config_error(write_profile: Callable[..., Path]) -> None:
    bad_profiles = [
        {**DEV_PROFILE, "client_key": None},
        {**DEV_PROFILE, "endpoint": "10.0.0.1:50051", "insecure": True},
        {**DEV_PROFILE, "timeout": -3},
        {**DEV_PROFILE, "endpoint": ""},
    ]
    for profile in bad_profiles:
        with pytest.raises(ConfigError) as info:
            ClientConfig.load(write_profile(profile))
        assert TOKEN not in str(info.value)
        assert TOKEN not in repr(info.value)
