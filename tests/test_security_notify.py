"""Notify under attack: names that try to add recipients, requests that cannot be rendered,
and SMTP servers that do not protect a password."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass, field
from email.headerregistry import Address
from pathlib import Path

import nats
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import eventually
from smtp_server import SmtpServer, _Handler
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from test_notify import IN_TWO_DAYS, Outcomes, publish, start_notify

from contracts import notify as contract
from contracts.identity import CONTACTS, Contact, ContactsReply
from notify import app as notify_app
from notify.render import Renderer, RenderError
from notify.smtp import SmtpUrlError
from notify.tables import Email
from portal.natsserver import free_port

ATTACKER = "attacker@example.org"


def reset(to: str, **kw) -> contract.PasswordResetEmail:
    return contract.PasswordResetEmail(to=to, reset_url="http://portal.test/r?token=t", expires_at=IN_TWO_DAYS, **kw)


def recipients(message) -> list[str]:
    """Every address in the headers a mail system sends to, as a mail program reads them."""
    return [a.addr_spec for h in ("To", "Cc", "Bcc") for v in message.get_all(h, []) for a in v.addresses]


async def ledger(db_url: str) -> list[Email]:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(select(Email).order_by(Email.id))).all())
    finally:
        await engine.dispose()


# -- names that try to add a header or a recipient ------------------------------------------------


async def test_a_name_with_a_line_break_adds_no_bcc_and_no_recipient(fresh_nats, smtp_server, tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'n.db'}"
    runtime = await start_notify(fresh_nats.url, db, smtp_server.url)
    nc = await nats.connect(fresh_nats.url)
    outcomes = Outcomes()
    await outcomes.attach(nc)
    hostile = {
        "crlf@example.org": f"Mary\r\nBcc: {ATTACKER}",
        "lf@example.org": f"Mary\nBcc: {ATTACKER}\nX-Injected: yes",
        "quotes@example.org": f'Eve" <{ATTACKER}>, "Mallory',
        "bidi@example.org": "Mary\u202eevil",
        # An RFC 2047 encoded word, which Python's email package would decode into the header.
        "encoded@example.org": "=?utf-8?q?Bcc=3A_attacker=40example=2Eorg?=",
    }
    async with runtime.running():
        for to, name in hostile.items():
            await publish(nc.jetstream(), reset(to, to_name=name))
        await publish(
            nc.jetstream(),
            contract.LinkRemovedEmail(
                to="pupil@example.org", school_name="Oak School", pupil_first_name=f"Amy\r\nBcc: {ATTACKER}"
            ),
        )
        await publish(
            nc.jetstream(),
            contract.LinkRemovedEmail(
                to="pupil2@example.org", school_name="Oak School", pupil_first_name="=?utf-8?q?Amy=0D=0ABcc:_a@x.org?="
            ),
        )
        await publish(nc.jetstream(), reset("zoe@example.org", to_name="Zoë Ó'Brien-Łukasz"))
        await eventually(lambda: len(outcomes.delivered) == 8, timeout=20)
    await nc.close()

    assert sorted(smtp_server.handler.rcpt_attempts) == sorted(
        [*hostile, "pupil@example.org", "pupil2@example.org", "zoe@example.org"]
    )
    for m in smtp_server.messages:
        assert len(m.envelope_to) == 1
        assert recipients(m.message) == m.envelope_to, "the headers name the one recipient only"
        assert m.message["Bcc"] is None and m.message["X-Injected"] is None
    for to in ("crlf@example.org", "lf@example.org", "bidi@example.org", "encoded@example.org"):
        (m,) = smtp_server.to(to)
        assert str(m.message["To"]) == to, "a name that is not a name is left out"
        assert ATTACKER not in m.message.as_string()
        assert m.part("plain").startswith("Hello,")
    (quoted,) = smtp_server.to("quotes@example.org")
    assert quoted.message["To"].addresses == (Address(f'Eve" <{ATTACKER}>, "Mallory', "quotes", "example.org"),)
    (removed,) = smtp_server.to("pupil@example.org")
    assert removed.subject == f"Your access to Amy Bcc: {ATTACKER}'s account has ended"
    (removed2,) = smtp_server.to("pupil2@example.org")
    assert "Bcc" in removed2.subject, "the text stays in the subject, as text"
    (zoe,) = smtp_server.to("zoe@example.org")
    assert zoe.message["To"].addresses[0].display_name == "Zoë Ó'Brien-Łukasz", "real names are kept"
    assert "Hello Zoë Ó'Brien-Łukasz," in zoe.part("plain")


def test_hostile_requests_render_to_one_recipient_or_fail_as_render_errors() -> None:
    renderer = Renderer(mail_from="no-reply@portal.test")
    names = [
        None,
        "",
        "Mary\r\nBcc: a@x.org",
        "\r\n\r\n",
        '"a@x.org" <a@x.org>, b@x.org',
        "=?utf-8?q?Bcc=3A_a=40x=2Eorg?=",
        "x" * 200,
        "\u2028Bcc: a@x.org",
        "Mary\x00",
        "名前 名前",
    ]
    addresses = [
        "mary@example.org",
        "mary@exämple.org",
        "józef@example.org",
        "mary@example.org\r\nBcc: a@x.org",
        "mary@example.org>, <a@x.org",
        '"a b"@example.org',
        "a@b@example.org",
        "mary",
        "m\u200bary@example.org",
    ]
    pupils = ["Amy", "Amy\r\nBcc: a@x.org", "{school_name}", "\x1b[31mAmy", "=?utf-8?q?x=0D=0ABcc:_a@x.org?="]
    sent = failed = 0
    for name in names:
        for to in addresses:
            for pupil in pupils:
                request = contract.InvitationEmail(
                    to=to,
                    to_name=name,
                    school_name="Oak",
                    pupil_first_name=pupil,
                    link_url="http://portal.test/link/X",
                    code="ABCD-EFGH-JKLM",
                    expires_at=IN_TWO_DAYS,
                )
                try:
                    rendered = renderer.render(request, recipient=to, recipient_name=name)
                except RenderError as exc:
                    assert to.strip() not in str(exc), "the reason names no address"
                    failed += 1
                    continue
                sent += 1
                msg = email.message_from_bytes(rendered.content, policy=email.policy.default)
                assert recipients(msg) == [rendered.recipient]
                assert msg["Bcc"] is None
                assert len(msg.get_all("Subject", [])) == 1
    # Only the addresses that are not addresses (or need SMTPUTF8) fail; an IDN domain is sent.
    assert sent == len(names) * len(pupils) * 2
    assert failed == len(names) * len(pupils) * (len(addresses) - 2)


async def test_a_request_that_cannot_be_rendered_fails_at_once_and_the_queue_keeps_flowing(
    fresh_nats, smtp_server, tmp_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'n.db'}"
    # One SMTP connection: poisoned emails at the head of the queue would hold up everything.
    runtime = await start_notify(fresh_nats.url, db, smtp_server.url, notify_smtp_concurrency=1)
    nc = await nats.connect(fresh_nats.url)
    outcomes = Outcomes()
    await outcomes.attach(nc)
    # Addresses the registration form takes, but which no SMTP server without SMTPUTF8 can carry.
    poisoned = [reset(f"józef{i}@example.org", reference=f"poison:{i}") for i in range(4)]
    ordinary = [reset(f"parent{i}@example.org") for i in range(10)]
    async with runtime.running():
        for r in poisoned + ordinary:
            await publish(nc.jetstream(), r)
        await eventually(lambda: len(outcomes.failed) == 4 and len(outcomes.delivered) == 10, timeout=20)
        rows = await ledger(db)
    await nc.close()

    assert sorted(m.envelope_to[0] for m in smtp_server.messages) == sorted(r.to for r in ordinary)
    assert {(f.request_id, f.reference, f.reason) for f in outcomes.failed} == {
        (r.event_id, r.reference, "render_failed") for r in poisoned
    }
    assert all("józef" not in f.detail and "SMTPUTF8" in f.detail for f in outcomes.failed)
    by_request = {row.request_id: row for row in rows}
    for r in poisoned:
        row = by_request[r.event_id]
        assert (row.status, row.attempts, row.first_attempt_at) == ("failed", 0, None), "never tried, takes no cap"
    assert not any(a.startswith("józef") for a in smtp_server.handler.rcpt_attempts)


async def test_an_attempt_that_crashes_waits_its_turn_instead_of_coming_back_first(
    fresh_nats, smtp_server, tmp_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'n.db'}"
    runtime = await start_notify(fresh_nats.url, db, smtp_server.url)
    nc = await nats.connect(fresh_nats.url)
    answers = [b'{"contacts": "not a list"}']  # an identity of another release, say

    async def contacts(msg) -> None:
        await msg.respond(answers[-1])

    await nc.subscribe(CONTACTS.subject, queue="identity", cb=contacts)
    outcomes = Outcomes()
    await outcomes.attach(nc)
    request = contract.LinkRemovedEmail(parent_id="parent-1", school_name="Oak School", pupil_first_name="Amy")
    async with runtime.running():
        await publish(nc.jetstream(), request)

        async def put_back() -> Email | None:
            rows = await ledger(db)
            return rows[0] if rows and rows[0].status == "pending" and rows[0].last_error else None

        row = await eventually(put_back, timeout=15)
        assert row.last_error == "crashed: ValidationError" and row.attempts == 1
        assert row.next_attempt_at > row.created_at, "put back with a delay, not left at the head of the queue"
        await publish(nc.jetstream(), reset("next@example.org"))
        await eventually(lambda: len(smtp_server.to("next@example.org")) == 1, timeout=15)
        answers.append(
            ContactsReply(contacts=[Contact(id="parent-1", email="dad@example.org", name="Dan")])
            .model_dump_json()
            .encode()
        )
        await eventually(lambda: len(smtp_server.to("dad@example.org")) == 1, timeout=20)
    await nc.close()
    assert outcomes.failed == []


# -- TLS -------------------------------------------------------------------------------------------


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, as a small relay would have."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(folder / "cert.pem", folder / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@dataclass
class _Watching(_Handler):
    over_tls: list[bool] = field(default_factory=list)  # one per accepted message
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # (user, password, over TLS)
    guard: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd calls handle_<VERB> by name
        with self.guard:
            self.over_tls.append(session.ssl is not None)
        return await super().handle_DATA(server, session, envelope)

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        with self.guard:
            self.logins.append((auth_data.login.decode(), auth_data.password.decode(), session.ssl is not None))
        return AuthResult(success=True)


class RelayServer(SmtpServer):
    """An SMTP server that offers STARTTLS (with a context) or not, and takes any password,
    including over a connection in clear text, which a careless relay does."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(port)
        self.handler: _Watching = _Watching()
        self.tls = tls

    def start(self) -> RelayServer:
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            ready_timeout=10,
            tls_context=self.tls,
            authenticator=self.handler.authenticate,
            auth_require_tls=False,
        )
        self._controller.start()
        return self

    def with_credentials(self, query: str = "") -> str:
        return f"smtp://mailer:s3cret-pass@127.0.0.1:{self.port}{query}"


@pytest.fixture
def relay(certificate):
    """Start a relay (`tls=True`: offering STARTTLS); stopped after the test."""
    started: list[RelayServer] = []

    def start(*, tls: bool) -> RelayServer:
        server = RelayServer(free_port(), certificate.server_context() if tls else None).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def smtp_health(nc) -> str:
    reply = await nc.request("rpc.notify.health.v1", b"{}", timeout=2)
    return json.loads(reply.data)["checks"]["smtp"]


async def test_a_server_offering_starttls_gets_the_email_over_tls(fresh_nats, relay, tmp_path: Path) -> None:
    server = relay(tls=True)
    runtime = await start_notify(fresh_nats.url, f"sqlite+aiosqlite:///{tmp_path / 'n.db'}", server.url)
    nc = await nats.connect(fresh_nats.url)
    async with runtime.running():
        await publish(nc.jetstream(), reset("mary@example.org"))
        await eventually(lambda: len(server.messages) == 1, timeout=15)
        assert await smtp_health(nc) == "ok"
    await nc.close()
    assert server.handler.over_tls == [True], "the reset link did not go in clear text"


async def test_credentials_go_only_over_tls_with_a_checked_certificate(
    fresh_nats, relay, certificate, tmp_path: Path
) -> None:
    server = relay(tls=True)
    runtime = await start_notify(
        fresh_nats.url,
        f"sqlite+aiosqlite:///{tmp_path / 'n.db'}",
        server.with_credentials(),
        smtp_ca=str(certificate.cert),
    )
    nc = await nats.connect(fresh_nats.url)
    async with runtime.running():
        await publish(nc.jetstream(), reset("mary@example.org"))
        await eventually(lambda: len(server.messages) == 1, timeout=15)
    await nc.close()
    assert server.handler.logins == [("mailer", "s3cret-pass", True)]
    assert server.handler.over_tls == [True]


async def test_a_password_is_never_sent_to_a_server_without_starttls_and_the_email_waits(
    fresh_nats, relay, certificate, tmp_path: Path
) -> None:
    server = relay(tls=False)
    db = f"sqlite+aiosqlite:///{tmp_path / 'n.db'}"
    runtime = await start_notify(fresh_nats.url, db, server.with_credentials(), smtp_ca=str(certificate.cert))
    nc = await nats.connect(fresh_nats.url)
    outcomes = Outcomes()
    await outcomes.attach(nc)
    request = reset("mary@example.org")
    async with runtime.running():
        await publish(nc.jetstream(), request)
        problem = await eventually(lambda: _refused(nc), timeout=15)
        assert "offers no STARTTLS" in problem and "s3cret" not in problem
        (row,) = await ledger(db)
        assert row.status == "pending" and "offers no STARTTLS" in (row.last_error or "")
        assert server.handler.logins == [] and server.messages == [], "no password, no email"
        assert outcomes.failed == [], "the email is kept, not dropped"
        # The relay is given TLS (or a path without an attacker): the waiting email goes out.
        server.stop()
        server.tls = certificate.server_context()
        server.start()
        await eventually(lambda: len(outcomes.delivered) == 1, timeout=20)
        assert await smtp_health(nc) == "ok"
    await nc.close()
    assert server.handler.logins == [("mailer", "s3cret-pass", True)]
    assert [m.envelope_to for m in server.messages] == [["mary@example.org"]]


async def _refused(nc) -> str | None:
    check = await smtp_health(nc)
    return None if check == "ok" else check


async def test_a_password_is_never_sent_to_a_certificate_that_does_not_check_out(
    fresh_nats, relay, tmp_path: Path
) -> None:
    server = relay(tls=True)  # self-signed, and no PORTAL_SMTP_CA trusting it
    runtime = await start_notify(fresh_nats.url, f"sqlite+aiosqlite:///{tmp_path / 'n.db'}", server.with_credentials())
    nc = await nats.connect(fresh_nats.url)
    async with runtime.running():
        await publish(nc.jetstream(), reset("mary@example.org"))
        problem = await eventually(lambda: _refused(nc), timeout=15)
    await nc.close()
    assert "certificate" in problem
    assert server.handler.logins == [] and server.messages == []


async def test_starttls_true_sends_nothing_in_clear_text(fresh_nats, relay, tmp_path: Path) -> None:
    server = relay(tls=False)
    runtime = await start_notify(
        fresh_nats.url, f"sqlite+aiosqlite:///{tmp_path / 'n.db'}", f"{server.url}?starttls=true"
    )
    nc = await nats.connect(fresh_nats.url)
    async with runtime.running():
        await publish(nc.jetstream(), reset("mary@example.org"))
        problem = await eventually(lambda: _refused(nc), timeout=15)
    await nc.close()
    assert "starttls=true" in problem
    assert server.handler.rcpt_attempts == [] and server.messages == []


async def test_a_local_relay_without_tls_or_credentials_still_gets_mail_in_clear_text(
    fresh_nats, relay, tmp_path: Path
) -> None:
    plain = relay(tls=False)
    offering = relay(tls=True)
    runtime_plain = await start_notify(fresh_nats.url, f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", plain.url)
    nc = await nats.connect(fresh_nats.url)
    async with runtime_plain.running():
        await publish(nc.jetstream(), reset("one@example.org"))
        await eventually(lambda: len(plain.messages) == 1, timeout=15)
        assert await smtp_health(nc) == "ok"
    # starttls=false: never TLS, even when offered (a relay whose TLS is broken).
    runtime_never = await start_notify(
        fresh_nats.url, f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", f"{offering.url}?starttls=false"
    )
    async with runtime_never.running():
        await publish(nc.jetstream(), reset("two@example.org"))
        await eventually(lambda: len(offering.messages) == 1, timeout=15)
    await nc.close()
    assert plain.handler.over_tls == [False] and offering.handler.over_tls == [False]
    assert plain.handler.logins == offering.handler.logins == []


@pytest.mark.parametrize(
    ("url", "ca", "error"),
    [
        ("smtp://mailer:pw@127.0.0.1:25?starttls=false", None, "credentials are never sent without TLS"),
        ("smtp://127.0.0.1:25?starttls=maybe", None, "expected true or false"),
        ("smtps://127.0.0.1:465?starttls=true", None, "TLS from the start"),
        ("smtp://127.0.0.1:25", "/nonexistent/ca.pem", "PORTAL_SMTP_CA"),
    ],
)
def test_an_unsafe_or_unclear_smtp_url_stops_notify_at_start(url: str, ca: str | None, error: str) -> None:
    settings = notify_app.Settings(
        nats_url="nats://127.0.0.1:1", database_url="sqlite+aiosqlite://", smtp_url=url, smtp_ca=ca
    )
    with pytest.raises(SmtpUrlError, match=error):
        notify_app.build(settings)
