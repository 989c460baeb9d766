"""The real OpenID provider of the OIDC integration tests: npm's `oidc-provider` (an OpenID
Certified implementation) run by Node.js from provider.mjs, over HTTPS with a test CA.

`make test` installs its packages (`npm ci` from the committed package-lock.json).
"""

from __future__ import annotations

import json
import selectors
import shutil
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.server.devstack.pki import SERVER_AUTH, IssuedCertificate, issue_certificate

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "provider.mjs"


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str
    groups: tuple[str, ...] = ()


class OidcProvider:
    """One provider process; `restart(jwks)` brings it back on the same port (same issuer)."""

    def __init__(
        self, workdir: Path, *, jwks: dict[str, Any], audience: str, clients: list[Client]
    ) -> None:
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(
                "the test OpenID provider is not installed: run `make oidc-provider` "
                "(npm ci --prefix tests/support/oidc_provider)"
            )
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("Node.js (node) is needed for the test OpenID provider")
        self._node = node
        self._workdir = workdir
        self.ca = issue_certificate("oidc test CA", is_ca=True)
        leaf = issue_certificate(
            "127.0.0.1",
            issuer=self.ca,
            ip_addresses=["127.0.0.1"],
            extended_key_usages=[SERVER_AUTH],
        )
        self.ca_file = _write(workdir / "idp-ca.pem", self.ca.cert_pem())
        self._cert = _write(workdir / "idp.pem", leaf.cert_pem())
        self._key = _write(workdir / "idp-key.pem", leaf.key_pem())
        self._audience = audience
        self._clients = clients
        self.jwks = jwks
        self.port = 0
        self.issuer = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log = workdir / "provider.log"

    def start(self) -> None:
        config = {
            "host": "127.0.0.1",
            "port": self.port,
            "cert": str(self._cert),
            "key": str(self._key),
            "jwks": self.jwks,
            "audience": self._audience,
            "clients": [
                {
                    "client_id": c.client_id,
                    "client_secret": c.client_secret,
                    "groups": list(c.groups),
                }
                for c in self._clients
            ],
        }
        config_file = _write(self._workdir / "provider.json", json.dumps(config).encode())
        log = self._log.open("ab")
        self._process = subprocess.Popen(
            [self._node, str(SCRIPT), str(config_file)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        log.close()
        ready = self._read_ready_line(timeout_s=30)
        self.port, self.issuer = ready["port"], ready["issuer"]

    def _read_ready_line(self, timeout_s: float) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._process.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                self.stop()
                raise RuntimeError(f"the OpenID provider did not start: {self._log.read_text()}")
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the OpenID provider exited: {self._log.read_text()}")
        return json.loads(line)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def restart(self, jwks: dict[str, Any]) -> None:
        """The provider with a new key set (key rotation), on the same port and issuer."""
        self.stop()
        self.jwks = jwks
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except RuntimeError:
                # The port may still be held for a moment by the process that just exited.
                if time.monotonic() > deadline:
                    raise

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def discovery(self) -> dict[str, Any]:
        url = f"{self.issuer}/.well-known/openid-configuration"
        with urllib.request.urlopen(url, context=self._context(), timeout=10) as response:
            return json.loads(response.read())

    def token(self, client: Client, scope: str = "") -> str:
        """An access token of the client_credentials grant (a JWT for the audience)."""
        form = {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "resource": self._audience,
        }
        if scope:
            form["scope"] = scope
        request = urllib.request.Request(
            self.discovery()["token_endpoint"],
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, context=self._context(), timeout=10) as response:
            body = json.loads(response.read())
        return body["access_token"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


__all__ = ["Client", "IssuedCertificate", "OidcProvider"]
