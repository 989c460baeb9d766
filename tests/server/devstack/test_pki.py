"""The dev PKI: what it issues, file modes, and when it re-issues."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from autoglm.server.devstack.pki import (
    CLIENT_AUTH,
    DevPki,
    ensure_dev_pki,
    issue_certificate,
)
from autoglm.server.files import write_atomic


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _files(pki: DevPki) -> list[Path]:
    return [pki.ca_cert, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key]


def test_issues_ca_server_and_client(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", client_name="teller-7")
    names = sorted(p.name for p in (tmp_path / "pki").iterdir())
    assert names == ["ca.pem", "client-key.pem", "client.pem", "server-key.pem", "server.pem"]

    ca = _cert(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    server = _cert(pki.server_cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    client = _cert(pki.client_cert)
    client.verify_directly_issued_by(ca)
    cn = client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "teller-7"
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://autoglm.dev/client/teller-7"
    ]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_keys_are_private(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path)
    for key in (pki.server_key, pki.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_reuses_a_fresh_set(tmp_path: Path) -> None:
    first = ensure_dev_pki(tmp_path)
    before = {p: p.read_bytes() for p in _files(first)}
    second = ensure_dev_pki(tmp_path)
    assert second == first
    assert {p: p.read_bytes() for p in _files(second)} == before


def test_reissues_everything_when_a_cert_expires_within_a_week(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path)
    old_ca = pki.ca_cert.read_bytes()
    # Replace the server cert by one (from a throw-away CA) that expires in 3 days.
    other_ca = issue_certificate("other", is_ca=True)
    soon = issue_certificate(
        "localhost", issuer=other_ca, not_after=datetime.now(UTC) + timedelta(days=3)
    )
    write_atomic(pki.server_cert, soon.cert_pem(), mode=0o644)
    write_atomic(pki.server_key, soon.key_pem(), mode=0o600)

    ensure_dev_pki(tmp_path)
    assert pki.ca_cert.read_bytes() != old_ca
    assert _cert(pki.server_cert).not_valid_after_utc > datetime.now(UTC) + timedelta(days=30)
    _cert(pki.server_cert).verify_directly_issued_by(_cert(pki.ca_cert))


@pytest.mark.parametrize("damage", ["missing", "garbage", "mismatched_key"])
def test_repairs_a_broken_set(tmp_path: Path, damage: str) -> None:
    pki = ensure_dev_pki(tmp_path)
    if damage == "missing":
        pki.client_key.unlink()
    elif damage == "garbage":
        pki.server_cert.write_bytes(b"not a certificate")
    else:
        pki.client_key.write_bytes(pki.server_key.read_bytes())
    ensure_dev_pki(tmp_path)
    client = _cert(pki.client_cert)
    client.verify_directly_issued_by(_cert(pki.ca_cert))
    key = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).public_key()
    assert load_pem_private_key(pki.client_key.read_bytes(), None).public_key() == key


def test_reissues_for_another_client_name(tmp_path: Path) -> None:
    ensure_dev_pki(tmp_path, client_name="alice")
    pki = ensure_dev_pki(tmp_path, client_name="bob")
    san = _cert(pki.client_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://autoglm.dev/client/bob"
    ]


def test_issue_certificate_can_make_expired_and_foreign_certs() -> None:
    foreign_ca = issue_certificate("foreign CA", is_ca=True)
    now = datetime.now(UTC)
    expired = issue_certificate(
        "old-client",
        issuer=foreign_ca,
        extended_key_usages=[CLIENT_AUTH],
        not_before=now - timedelta(days=10),
        not_after=now - timedelta(days=1),
    )
    expired.certificate.verify_directly_issued_by(foreign_ca.certificate)
    assert expired.certificate.not_valid_after_utc < now
    assert "PRIVATE KEY" not in repr(expired)
