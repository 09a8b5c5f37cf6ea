"""Sending one email over SMTP so that a crash can never send it twice.

SMTP has no idempotency: once the server has the final "." of a message it delivers it,
whether or not we live to read its 250. So the ledger is told "delivering" *before* that final
"." is written:

- killed before the mark: the server never saw the end of the message and drops it; the
  email is still `sending` and is sent again later, once;
- killed after the mark: it is never sent again (the final "." reaches the kernel's socket
  buffer right after the commit, and the kernel delivers buffered data even after the process
  is gone).

TLS (see `SmtpTarget`): STARTTLS whenever the server offers it; required, with the server's
certificate checked, for smtps://, `starttls=true` and whenever the URL has credentials, since
a password (and every reset link after it) must never cross the network in clear text. Where
TLS is required and missing, nothing is sent at all (`TlsRefused`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings


class SmtpUrlError(ValueError):
    """PORTAL_SMTP_URL is not a URL this service understands, or asks for something unsafe."""


_YES = ("1", "true", "yes")
_NO = ("0", "false", "no")


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to send mail.

    `start_tls` is True (required), None (when the server offers it) or False (never, for a
    local relay). A password is only ever sent over TLS whose certificate was checked: with
    credentials, TLS is required whatever `start_tls` says, and `starttls=false` is refused.
    """

    host: str
    port: int
    use_tls: bool = False
    start_tls: bool | None = None
    username: str | None = None
    password: str | None = None
    validate_certs: bool = True
    ca_file: str | None = None

    @classmethod
    def from_url(cls, url: str, *, ca_file: str | None = None) -> SmtpTarget:
        """Parse `smtp://[user:pass@]host:port[?starttls=true|false][&verify=false]` or `smtps://…`.

        `ca_file` is a PEM file of the certificates the server's may be signed by (instead of
        the system's); it is read here, so a missing or broken file stops the service at start.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise SmtpUrlError(f"expected smtp://host:port or smtps://host:port, got scheme {parts.scheme!r}")
        query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
        use_tls = parts.scheme == "smtps"
        start_tls = _flag(query, "starttls")
        if use_tls and start_tls is not None:
            raise SmtpUrlError("smtps:// is TLS from the start; starttls= applies to smtp:// only")
        username = unquote(parts.username) if parts.username else None
        if username is not None and start_tls is False:
            raise SmtpUrlError(
                "starttls=false with a user name: credentials are never sent without TLS "
                "(drop starttls=false, or the credentials for a local relay)"
            )
        verify = _flag(query, "verify")
        target = cls(
            host=parts.hostname,
            port=parts.port or (465 if use_tls else 587 if start_tls else 25),
            use_tls=use_tls,
            start_tls=start_tls,
            username=username,
            password=unquote(parts.password) if parts.password else None,
            validate_certs=verify is not False,
            ca_file=ca_file,
        )
        if ca_file is not None:
            try:
                target.checked_context()
            except (OSError, ssl.SSLError) as exc:
                raise SmtpUrlError(f"PORTAL_SMTP_CA {ca_file!r} is not a readable PEM file: {exc}") from exc
        return target

    @property
    def tls_required(self) -> bool:
        """Whether mail may only go over TLS (smtps, starttls=true, or credentials to protect)."""
        return self.use_tls or self.start_tls is True or self.username is not None

    def checked_context(self) -> ssl.SSLContext:
        """TLS that checks the server's certificate and name (unless `verify=false`)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def describe(self) -> str:
        """The target without its credentials, for logs."""
        scheme = "smtps" if self.use_tls else "smtp"
        query = {True: "?starttls=true", False: "?starttls=false", None: ""}[self.start_tls]
        return f"{scheme}://{self.host}:{self.port}{query}"


def _flag(query: dict[str, str], name: str) -> bool | None:
    value = query.get(name)
    if value is None:
        return None
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise SmtpUrlError(f"{name}={value!r}: expected true or false")


def _opportunistic_context() -> ssl.SSLContext:
    """TLS when the server offers it and nothing requires it: the certificate is not checked.

    Encryption without a check still keeps mail from anyone merely listening; checking would
    not stop an attacker on the path (who can remove the server's STARTTLS offer instead) but
    would stop mail to relays with self-signed certificates that work today. Where it matters,
    `starttls=true` (or credentials) makes TLS required and checked.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Rejected(Exception):
    """The server refused the email for good (a 5xx reply)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class TryLater(Exception):
    """The email may go through later: a 4xx reply, or no connection."""

    def __init__(self, detail: str, code: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class TlsRefused(TryLater):
    """The connection is not safe enough for this target: no TLS where it is required (a
    password would go in clear text), or a certificate that does not check out. Nothing was
    sent; the email waits, since an operator (or the attacker on the path going away) can
    change that, and notify reports itself degraded meanwhile."""


class Unconfirmed(Exception):
    """The final "." was written but no reply came back: it may well have been delivered."""


def _check(code: int, message: str) -> None:
    if 500 <= code < 600:
        raise Rejected(code, message)
    if code >= 400:
        raise TryLater(f"{code} {message}", code)


def _protocol(smtp: aiosmtplib.SMTP) -> SMTPProtocol:
    """The connection's protocol. aiosmtplib clears it when the server closes the connection;
    the attempt then ends with an error, like any unexpected failure."""
    if smtp.protocol is None:
        raise RuntimeError("the SMTP connection was closed")
    return smtp.protocol


class SmtpConnection:
    """One connection to the SMTP server, reused for consecutive emails."""

    def __init__(
        self, target: SmtpTarget, *, timeout: float = 30.0, local_hostname: str = "parent-portal.localhost"
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._smtp: aiosmtplib.SMTP | None = None
        self._checked: ssl.SSLContext | None = None

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        t = self.target
        if self._checked is None:
            self._checked = await asyncio.to_thread(t.checked_context)
        # Credentials are given to the server here, after TLS is settled, never by aiosmtplib
        # on connect: it would send them over a connection that stayed in clear text.
        smtp = aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            use_tls=t.use_tls,
            start_tls=False,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
            tls_context=self._checked,
        )
        try:
            await smtp.connect()
            if not t.use_tls and t.start_tls is not False:
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()  # an old server: no extensions, so no STARTTLS either
                if smtp.supports_extension("starttls"):
                    await smtp.starttls(tls_context=self._checked if t.tls_required else _opportunistic_context())
                elif t.tls_required:
                    why = "has credentials" if t.username is not None else "says starttls=true"
                    raise TlsRefused(
                        f"{t.describe()} offers no STARTTLS and the URL {why}: nothing is sent in clear text"
                    )
            if t.username is not None:
                await smtp.login(t.username, t.password or "")
        except TlsRefused:
            smtp.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            smtp.close()
            raise TlsRefused(f"the certificate of {t.describe()} does not check out: {exc.verify_message}") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            smtp.close()
            raise TryLater(f"authentication failed: {exc.code}", exc.code) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                cause = exc.__cause__
                raise TlsRefused(
                    f"the certificate of {t.describe()} does not check out: {cause.verify_message}"
                ) from exc
            raise TryLater(f"cannot connect to {t.describe()}: {type(exc).__name__}") from exc
        self._smtp = smtp
        return smtp

    async def close(self) -> None:
        """Say goodbye to the server (or just drop the connection)."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            await smtp.quit()
        except Exception:  # noqa: BLE001 - closing anyway
            smtp.close()

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    async def send(
        self,
        *,
        sender: str,
        recipient: str,
        content: bytes,
        before_final_dot: Callable[[], Awaitable[None]],
    ) -> str:
        """Send one message; `before_final_dot` records that it is being delivered.

        Returns the server's reply to the final "." (2xx). Raises `Rejected` (5xx),
        `TryLater` (4xx, connection trouble before the final ".") or `Unconfirmed`.
        """
        smtp = await self._connected()
        try:
            try:
                await smtp.mail(sender)
                await smtp.rcpt(recipient)
            except aiosmtplib.SMTPResponseException as exc:
                _check(exc.code, exc.message)
                raise TryLater(f"unexpected reply: {exc.code} {exc.message}", exc.code) from exc
            code, msg = await self._command(smtp, b"DATA")
            if code != 354:
                _check(code, msg)
                raise TryLater(f"unexpected reply to DATA: {code} {msg}", code)
            body = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(content))
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            _protocol(smtp).write(body)
        except (Rejected, TryLater):
            await self._reset(smtp)
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._drop()
            raise TryLater(f"connection trouble: {type(exc).__name__}") from exc
        try:
            await before_final_dot()
        except BaseException:
            # Without the mark we must not finish: dropping the connection mid-message makes
            # the server discard it, so it can be sent again safely later.
            self._drop()
            raise
        try:
            code, msg = await self._command(smtp, b".")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._drop()
            raise Unconfirmed(type(exc).__name__) from exc
        _check(code, msg)
        return f"{code} {msg}"

    async def _command(self, smtp: aiosmtplib.SMTP, *args: bytes) -> tuple[int, str]:
        response = await _protocol(smtp).execute_command(*args, timeout=self.timeout)
        return response.code, response.message

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.rset()
        except Exception:  # noqa: BLE001 - a fresh connection next time
            self._drop()
