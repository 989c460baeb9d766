"""Audit settings: what `validate` refuses, naming the setting, and the serve flags."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.server.cli import build_parser
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
    )


def test_fail_closed_and_anchor_need_an_audit_log(secured: Settings, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"audit_required: needs audit_dir"):
        replace(secured, audit_required=True).validate()
    with pytest.raises(SettingsError, match=r"audit_anchor: needs audit_dir"):
        replace(secured, audit_anchor=str(tmp_path / "anchor")).validate()
    replace(secured, audit_dir=tmp_path, audit_required=True, audit_anchor="syslog").validate()


def test_the_anchor_interval_must_be_positive(secured: Settings, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="audit_anchor_interval_s: must be > 0"):
        replace(secured, audit_dir=tmp_path, audit_anchor_interval_s=0).validate()


def test_serve_flags() -> None:
    args = build_parser().parse_args(
        ["serve", "--audit-dir", "/a", "--audit-required", "--audit-anchor", "syslog:/dev/log",
         "--audit-anchor-interval", "5"]
    )  # fmt: skip
    assert (args.audit_required, args.audit_anchor, args.audit_anchor_interval) == (
        True,
        "syslog:/dev/log",
        5.0,
    )
    defaults = build_parser().parse_args(["serve"])
    assert (defaults.audit_required, defaults.audit_anchor) == (False, None)
