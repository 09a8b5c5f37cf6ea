"""Sending one email over SMTP so that a crash can never send it twice.

SMTP has no idempotency: once the server has the final "." of a message it delivers it,
whether or not we live to read its 250. So the ledger is told "delivering" *before* that final
"." is written:

- killed before the mark: the server never saw the end of the message and drops it; the
  email is still `sending` and is sent again later, once;
- killed after the mark: it is never sent again (the final "." reaches the kernel's socket
  buffer right after the commit, and the kernel delivers buffered data even after the process
  is gone).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings


class SmtpUrlError(ValueError):
    """PORTAL_SMTP_URL is not a URL this service understands."""


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to send mail."""

    host: str
    port: int
    use_tls: bool = False
    start_tls: bool = False
    username: str | None = None
    password: str | None = None
    validate_certs: bool = True

    @classmethod
    def from_url(cls, url: str) -> SmtpTarget:
        """Parse `smtp://[user:pass@]host:port[?starttls=true]` or `smtps://…`."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise SmtpUrlError(f"expected smtp://host:port or smtps://host:port, got scheme {parts.scheme!r}")
        query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
        use_tls = parts.scheme == "smtps"
        start_tls = query.get("starttls", "false") in ("1", "true", "yes")
        if use_tls and start_tls:
            raise SmtpUrlError("smtps:// is TLS from the start; starttls=true applies to smtp:// only")
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if use_tls else 587 if start_tls else 25),
            use_tls=use_tls,
            start_tls=start_tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            validate_certs=query.get("verify", "true") not in ("0", "false", "no"),
        )

    def describe(self) -> str:
        """The target without its credentials, for logs."""
        scheme = "smtps" if self.use_tls else "smtp"
        return f"{scheme}://{self.host}:{self.port}{'?starttls=true' if self.start_tls else ''}"


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

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        t = self.target
        context = None
        if (t.use_tls or t.start_tls) and not t.validate_certs:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        smtp = aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            use_tls=t.use_tls,
            start_tls=t.start_tls,
            username=t.username,
            password=t.password,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
            tls_context=context,
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise TryLater(f"authentication failed: {exc.code}", exc.code) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
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
