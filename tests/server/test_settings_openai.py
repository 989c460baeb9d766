"""Settings of the OpenAI front door: what `validate` refuses, naming the setting."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.server.models import ModelSpec
from autoglm.server.settings import Settings, SettingsError, TlsSettings


@pytest.fixture
def secured(tmp_path: Path) -> Settings:
    for name in ("cert.pem", "key.pem", "ca.pem", "tokens.json"):
        (tmp_path / name).write_text("x")
    return Settings(
        listen="127.0.0.1:0",
        triton_target="127.0.0.1:8001",
        models=(ModelSpec(name="m", triton_model="m", tokenizer_dir=tmp_path),),
        tls=TlsSettings(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"),
        token_store=tmp_path / "tokens.json",
        openai_listen="0.0.0.0:8000",
    )


def test_secured_front_door_on_any_address(secured: Settings) -> None:
    secured.validate()
    replace(secured, openai_require_client_cert=True).validate()


def test_required_client_certs_need_a_ca(secured: Settings) -> None:
    assert secured.tls is not None
    no_ca = replace(secured.tls, client_ca=None, require_client_cert=False)
    replace(secured, tls=no_ca).validate()  # TLS + token only is allowed
    with pytest.raises(SettingsError, match="openai_require_client_cert"):
        replace(secured, tls=no_ca, openai_require_client_cert=True).validate()


def test_insecure_dev_mode_stays_on_loopback(secured: Settings) -> None:
    dev = replace(secured, insecure_dev=True, tls=None, token_store=None)
    with pytest.raises(SettingsError, match="openai_listen: plaintext"):
        dev.validate()
    replace(dev, openai_listen="127.0.0.1:8000").validate()
    with pytest.raises(SettingsError, match="openai_require_client_cert"):
        replace(dev, openai_listen="127.0.0.1:8000", openai_require_client_cert=True).validate()


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"openai_listen": "8000"}, "openai_listen: '8000' is not host:port"),
        ({"openai_max_body_bytes": 10}, "openai_max_body_bytes"),
        ({"openai_listen": None, "openai_require_client_cert": True}, "openai_require_client_cert"),
    ],
)
def test_refusals_name_the_setting(
    secured: Settings, change: dict[str, object], setting: str
) -> None:
    with pytest.raises(SettingsError, match=setting):
        replace(secured, **change).validate()  # type: ignore[arg-type]
