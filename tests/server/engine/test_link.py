"""The engine link's two forms (server/engine/link.py) as the settings and `autoglm serve`
flags take them: mTLS over TCP, or a unix socket in a private directory. Pure: no Triton here
(the real one over a unix socket is in tests/integration/test_unix_link.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.server.cli import _engine_link, build_parser
from autoglm.server.devstack.links import dev_engine_link, unix_link
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec
from autoglm.server.settings import Settings, SettingsError

MODEL = ModelSpec(name="m", triton_model="m", tokenizer_dir=Path("/tmp/m"))


def settings(target: str, link: EngineLink | None) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        triton_target=target,
        engine_link=link,
        models=(MODEL,),
        insecure_dev=True,
    )


def test_unix_link_has_no_tls_flags_and_keeps_the_secret(tmp_path: Path) -> None:
    link = unix_link()
    args = link.triton_args()
    assert not [a for a in args if a.startswith(("--grpc-use-ssl", "--grpc-server", "--grpc-root"))]
    assert "--allow-http=false" in args
    (restricted,) = [a for a in args if a.startswith("--grpc-restricted-protocol=")]
    assert restricted.endswith(f"autoglm-facade={link.secret}")
    assert link.channel_credentials() is None and link.ssl_context() is None
    assert link.metadata() == (("triton-grpc-protocol-autoglm-facade", link.secret),)
    assert link.secret not in repr(link)
    tls = dev_engine_link(tmp_path / "pki")
    assert "--grpc-use-ssl-mutual=true" in tls.triton_args()
    assert tls.ssl_context() is not None and tls.channel_credentials() is not None
    assert unix_link().secret != link.secret


def test_the_secret_file_is_private_from_the_start_and_read_back_by_serve(
    tmp_path: Path,
) -> None:
    link = unix_link()
    path = link.write_secret(tmp_path / "triton-secret")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == link.secret
    assert [p.name for p in tmp_path.iterdir()] == ["triton-secret"]  # no temporary file left
    args = _serve_args("--triton", "unix:/run/a/grpc:1", "--triton-secret-file", str(path))
    assert _engine_link(args) == EngineLink(secret=link.secret)  # type: ignore[arg-type]


def test_a_private_socket_directory_is_accepted(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o750)
    d.chmod(0o750)  # group access is allowed (a sidecar sharing the façade's group)
    settings(f"unix:{d}/grpc:1", unix_link()).validate()
    settings(f"unix://{d}/grpc:1", None).validate()


def test_a_socket_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(0o701)
    with pytest.raises(SettingsError, match=r"^triton_target: .* open to other users .*701"):
        settings(f"unix:{d}/grpc:1", unix_link()).validate()
    with pytest.raises(SettingsError, match=r"^triton_target: .*missing.*No such file"):
        settings(f"unix:{tmp_path}/missing/grpc:1", unix_link()).validate()
    with pytest.raises(SettingsError, match=r"^triton_target: .*absolute"):
        settings("unix:run/grpc:1", unix_link()).validate()


def test_a_link_without_tls_is_refused_over_tcp() -> None:
    with pytest.raises(SettingsError, match=r"^engine_link: .*unix: triton_target"):
        settings("127.0.0.1:8001", unix_link()).validate()


def _serve_args(*extra: str) -> object:
    return build_parser().parse_args(["serve", "--model", "m=m:/tmp/m", *extra])


def test_serve_flags_unix_target_needs_only_the_secret(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    link = _engine_link(
        _serve_args("--triton", "unix:/run/a/grpc:1", "--triton-secret-file", str(secret))
    )  # type: ignore[arg-type]
    assert link is not None and link.tls is None and link.secret == "s3cret"
    assert _engine_link(_serve_args("--triton", "unix:/run/a/grpc:1")) is None  # type: ignore[arg-type]


def test_serve_flags_tcp_target_needs_all_four(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    args = _serve_args("--triton", "127.0.0.1:8001", "--triton-secret-file", str(secret))
    with pytest.raises(SettingsError, match="--triton-ca, --triton-cert, --triton-key"):
        _engine_link(args)  # type: ignore[arg-type]
    # On a unix target, TLS flags are all-or-none too (mTLS over the socket is allowed).
    args = _serve_args(
        "--triton",
        "unix:/run/a/grpc:1",
        "--triton-ca",
        "ca.pem",
        "--triton-secret-file",
        str(secret),
    )
    with pytest.raises(SettingsError, match="--triton-cert, --triton-key"):
        _engine_link(args)  # type: ignore[arg-type]
    pem = [str(tmp_path / n) for n in ("ca.pem", "c.pem", "c.key")]
    full = _serve_args(
        "--triton", "127.0.0.1:8001", "--triton-ca", pem[0], "--triton-cert", pem[1],
        "--triton-key", pem[2], "--triton-secret-file", str(secret),
    )  # fmt: skip
    link = _engine_link(full)  # type: ignore[arg-type]
    assert link is not None and link.tls is not None
    assert (str(link.tls.client_cert), str(link.tls.client_key)) == (pem[1], pem[2])
