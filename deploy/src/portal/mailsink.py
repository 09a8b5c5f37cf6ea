"""The local mail sink of `portal up`: a real SMTP server that keeps every message in a Maildir.

Notify sends to it exactly as to a production server, and the gateway lists the Maildir at
`/dev/mail`. It accepts any recipient and never relays anything.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import signal
from email.utils import formatdate
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from contracts.kit.logs import configure_logging, get_logger

log = get_logger("portal.mailsink")


def store_message(box: mailbox.Maildir, envelope: Envelope) -> str:
    """Write one received message into the Maildir; its key."""
    raw = envelope.original_content
    if raw is None:
        raw = envelope.content if isinstance(envelope.content, bytes) else (envelope.content or "").encode()
    # What a delivering MTA would add: where the mail came from and to whom it was delivered,
    # which the headers need not say (Bcc).
    trace = [f"Return-Path: <{envelope.mail_from or ''}>"]
    trace += [f"Delivered-To: {rcpt}" for rcpt in envelope.rcpt_tos]
    trace.append(f"X-Portal-Received: {formatdate(localtime=False, usegmt=True)}")
    data = ("\n".join(trace) + "\n").encode("utf-8", "surrogateescape") + raw.replace(b"\r\n", b"\n")
    # Maildir.add writes into tmp/ and then moves the file into new/: a reader never sees
    # half a message.
    return box.add(data)


class MaildirHandler:
    """aiosmtpd handler: every message to the Maildir, one log line each, without addresses."""

    def __init__(self, maildir: Path) -> None:
        self.box = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        """Store the message; the SMTP answer."""
        try:
            key = store_message(self.box, envelope)
        except OSError as exc:
            log.error("mail_store_failed", error=type(exc).__name__)
            return "451 Requested action aborted: could not store the message"
        size = len(envelope.original_content or b"")
        log.info("mail_stored", key=key, size=size, recipients=len(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


async def serve_async(port: int, maildir: Path, *, host: str = "127.0.0.1") -> None:
    """Listen on host:port until SIGTERM or SIGINT."""
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="portal-mail-sink", ident="Parent Portal mail sink", enable_SMTPUTF8=True),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("mail_sink_started", port=port, maildir=str(maildir))
    async with server:
        await stop.wait()
    log.info("mail_sink_stopped")


def serve(port: int, maildir: Path, *, host: str = "127.0.0.1", level: str = "INFO", fmt: str = "json") -> None:
    """Run the mail sink in the foreground."""
    configure_logging(service="mail-sink", level=level, fmt=fmt)
    # aiosmtpd logs every SMTP command at INFO, addresses included; ours say enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve_async(port, maildir, host=host))
