"""Development PKI: a throw-away CA, a localhost server certificate and one client certificate.

Production deployments bring their own PKI; this exists so that `autoglm` and the tests run with
real mTLS out of the box (the API contract requires a client certificate by default).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from autoglm.server.files import write_atomic

__all__ = [
    "CLIENT_AUTH",
    "SERVER_AUTH",
    "DevPki",
    "IssuedCertificate",
    "client_spiffe_id",
    "ensure_dev_pki",
    "issue_certificate",
]

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH

# Certificates this close to expiry are replaced, so a dev server started today still works for
# a week of sessions without a handshake failing mid-demo.
RENEW_BEFORE = timedelta(days=7)
CA_LIFETIME = timedelta(days=365)
LEAF_LIFETIME = timedelta(days=90)
# Backdate notBefore a little: a peer whose clock is slightly behind would otherwise reject a
# certificate issued "in the future".
CLOCK_SKEW = timedelta(minutes=5)

SPIFFE_TRUST_DOMAIN = "autoglm.dev"


def client_spiffe_id(name: str) -> str:
    return f"spiffe://{SPIFFE_TRUST_DOMAIN}/client/{name}"


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:  # never print key material
        return f"IssuedCertificate(subject={self.certificate.subject.rfc4514_string()!r})"


def issue_certificate(
    common_name: str,
    *,
    issuer: IssuedCertificate | None = None,
    is_ca: bool = False,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    uris: Sequence[str] = (),
    extended_key_usages: Sequence[x509.ObjectIdentifier] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> IssuedCertificate:
    """Creates an EC P-256 key and a certificate for it, signed by `issuer` (None = self-signed).

    Tests use it directly for certificates `ensure_dev_pki` never makes: expired ones, ones from a
    foreign CA, ones with the wrong key usage.
    """
    now = datetime.now(UTC)
    not_before = not_before or now - CLOCK_SKEW
    not_after = not_after or not_before + (CA_LIFETIME if is_ca else LEAF_LIFETIME)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signing_key = issuer.private_key if issuer else key
    issuer_name = issuer.certificate.subject if issuer else subject

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key()),
            critical=False,
        )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    sans += [x509.UniformResourceIdentifier(uri) for uri in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if extended_key_usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(extended_key_usages)), critical=False
        )
    certificate = builder.sign(signing_key, hashes.SHA256())
    return IssuedCertificate(certificate=certificate, private_key=key)


@dataclass(frozen=True)
class DevPki:
    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_name: str


def ensure_dev_pki(directory: Path, *, client_name: str = "dev-client") -> DevPki:
    """Returns the dev PKI in `directory`, (re)creating it when anything is missing or stale.

    The CA key is deliberately never written to disk: when any certificate needs replacing, the
    whole set (CA included) is re-issued. Dev clients then need the new `ca.pem`, which lives in
    the same directory, and a stolen dev directory cannot be used to mint new certificates.
    """
    directory = Path(directory)
    pki = DevPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        client_name=client_name,
    )
    if not _is_usable(pki):
        _issue_all(pki)
    return pki


def _issue_all(pki: DevPki) -> None:
    pki.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = issue_certificate("autoglm dev CA", is_ca=True)
    server = issue_certificate(
        "localhost",
        issuer=ca,
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1", "::1"],
        extended_key_usages=[SERVER_AUTH],
    )
    client = issue_certificate(
        pki.client_name,
        issuer=ca,
        uris=[client_spiffe_id(pki.client_name)],
        extended_key_usages=[CLIENT_AUTH],
    )
    # Keys first, CA last: a reader that sees the new ca.pem also sees matching leaves. A crash in
    # between leaves a mixed set, which `_is_usable` detects and repairs on the next call.
    write_atomic(pki.server_key, server.key_pem(), mode=0o600)
    write_atomic(pki.server_cert, server.cert_pem(), mode=0o644)
    write_atomic(pki.client_key, client.key_pem(), mode=0o600)
    write_atomic(pki.client_cert, client.cert_pem(), mode=0o644)
    write_atomic(pki.ca_cert, ca.cert_pem(), mode=0o644)


def _is_usable(pki: DevPki) -> bool:
    """True when every file exists, parses, chains to ca.pem, matches its key and is fresh."""
    try:
        ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        pairs = [
            (_load_cert(pki.server_cert), _load_key(pki.server_key)),
            (_load_cert(pki.client_cert), _load_key(pki.client_key)),
        ]
    except (OSError, ValueError, TypeError):
        return False
    deadline = datetime.now(UTC) + RENEW_BEFORE
    for cert in (ca, *(cert for cert, _ in pairs)):
        if cert.not_valid_after_utc <= deadline or cert.not_valid_before_utc > datetime.now(UTC):
            return False
    for cert, key in pairs:
        if cert.public_key() != key.public_key():
            return False
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            return False
    client_cert = pairs[1][0]
    try:
        san = client_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return client_spiffe_id(pki.client_name) in san.get_values_for_type(
        x509.UniformResourceIdentifier
    )


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("dev PKI keys are EC keys")
    return key
