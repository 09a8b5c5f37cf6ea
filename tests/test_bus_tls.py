"""TLS to NATS, end to end: `portal nats-config --tls-cert --tls-key --tls-ca` makes a server that
speaks only TLS and asks every client for a certificate from the trust's CA, on top of its nkey;
the parts, the gateway and the `portal` command connect with PORTAL_NATS_CA, PORTAL_NATS_CERT and
PORTAL_NATS_KEY, and whoever lacks the certificate, or brings one from another CA, is refused.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contracts.kit import rpc
from contracts.kit.settings import CommonSettings
from contracts.rpc import HealthRequest, health
from portal.natsserver import NatsServer, free_port, wait_for_port

PORTAL = str(Path(sys.executable).parent / "portal")


@dataclass
class Issued:
    cert: Path
    key: Path


class Authority:
    """A certificate authority of the test's own, issuing server and client certificates."""

    def __init__(self, out: Path, name: str) -> None:
        self.out = out
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = (
            self._builder(subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = out / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(getattr(self, "name", subject))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, name: str, *, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.out / f"{name}.crt", self.out / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        issued.key.chmod(0o600)
        return issued


@dataclass
class TlsBus:
    server: NatsServer
    creds: Path
    ca: Authority
    client: Issued
    rogue: Issued

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.server.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """A part's environment: its seeds, the CA and the client certificate, nothing else of the machine's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        env.update(
            PORTAL_NATS_URL=self.url,
            PORTAL_NATS_CREDS_DIR=str(self.creds),
            PORTAL_NATS_CA=str(self.ca.path),
            PORTAL_NATS_CERT=str(self.client.cert),
            PORTAL_NATS_KEY=str(self.client.key),
        )
        env.update(overrides)
        return env

    def settings(self) -> CommonSettings:
        return CommonSettings(
            nats_url=self.url,
            nats_creds_dir=self.creds,
            nats_ca=self.ca.path,
            nats_cert=self.client.cert,
            nats_key=self.client.key,
        )


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBus]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = Authority(tmp, "trust-ca")
    server_cert = ca.issue("nats-server", server=True)
    rogue = Authority(tmp, "another-ca").issue("intruder")
    port = free_port()
    creds = tmp / "creds"
    written = subprocess.run(
        [PORTAL, "nats-config", "--out", str(creds), "--port", str(port)]
        + ["--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key), "--tls-ca", str(ca.path)],
        env={k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    server = NatsServer(
        port=port, store_dir=tmp / "store", config=creds / "nats-server.conf", log_file=tmp / "nats.log"
    )
    server.start()
    try:
        yield TlsBus(server, creds, ca, ca.issue("portal-parts"), rogue)
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def parts(bus: TlsBus, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[int]:
    """identity and a gateway, each its own process, on the TLS bus; the gateway's HTTP port."""
    tmp = tmp_path_factory.mktemp("tls-parts")
    http_port = free_port()
    env = bus.env(PORTAL_DATA_DIR=str(tmp), PORTAL_HTTP_PORT=str(http_port))
    procs = [
        subprocess.Popen(
            [PORTAL, "service", name],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / f"{name}.log", "w"),  # noqa: SIM115 - closed with the process
        )
        for name in ("identity", "gateway")
    ]
    try:
        await asyncio.to_thread(wait_for_port, http_port, timeout=60, proc=procs[1])
        yield http_port
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_the_server_speaks_only_tls_and_asks_for_the_trusts_certificate(bus: TlsBus) -> None:
    async def refused(**options: object) -> bool:
        try:
            nc = await nats.connect(
                bus.url if "tls" in options else f"nats://127.0.0.1:{bus.server.port}",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=3,
                **bus.settings().nats_connect_options("operator") | options,
            )
        except Exception:  # noqa: BLE001 - any refusal will do, the server's or the handshake's
            return True
        await nc.close()
        return False

    no_tls: dict[str, object] = {"tls": None}
    assert await refused(**no_tls), "a plain-text connection"
    server_only = ssl.create_default_context(cafile=str(bus.ca.path))
    assert await refused(tls=server_only), "TLS without a client certificate"
    intruder = ssl.create_default_context(cafile=str(bus.ca.path))
    intruder.load_cert_chain(str(bus.rogue.cert), str(bus.rogue.key))
    assert await refused(tls=intruder), "a client certificate from another CA"
    assert not await refused(tls=bus.settings().nats_tls()), "the trust's own certificate and the operator's seed"


async def test_a_sign_in_crosses_the_tls_bus_from_the_gateway_to_identity(bus: TlsBus, parts: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{parts}", timeout=30) as http:

        async def answered() -> httpx.Response:
            for _ in range(60):
                response = await http.post(
                    "/api/v1/auth/login", json={"email": "nobody@example.org", "password": "not-the-password-1"}
                )
                if response.status_code != 503:
                    return response
                await asyncio.sleep(0.5)
            return response

        response = await answered()
    # identity answered (a wrong password), so the request went there and back over TLS.
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_credentials"


async def test_the_gateways_user_and_the_portal_command_work_over_tls(bus: TlsBus, parts: int) -> None:
    settings = bus.settings()
    nc = await nats.connect(settings.nats_url or "", **settings.nats_connect_options("gateway"))
    try:
        reply = await rpc.call(nc, health("identity"), HealthRequest(), timeout=10)
        assert reply.service == "identity"
    finally:
        await nc.close()
    listed = await asyncio.to_thread(
        subprocess.run, [PORTAL, "dead-letters", "list"], env=bus.env(), capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
