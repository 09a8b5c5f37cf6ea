"""`/dev/mail`: the messages the local mail sink wrote into its Maildir, for people and tests.

Registered only while `PORTAL_DEV_MAIL_DIR` is set (by `portal up` with its local sink), so a
deployment that sends real mail has no such page at all.
"""

from __future__ import annotations

import ipaddress
import mailbox
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Annotated, Any

from litestar import MediaType, Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.params import QueryParameter
from litestar.response import Template
from markupsafe import Markup, escape

from gateway.auth import client_ip
from gateway.errors import ApiError

# The message's own HTML is shown as it would be in a mail client, but it is not ours:
# no scripts, no forms, an origin of its own; only inline styles, which emails rely on.
MAIL_HTML_CSP = (
    "default-src 'none'; object-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; sandbox"
)

_URL = re.compile(r"https?://[^\s<>\"']+")


@dataclass(frozen=True)
class DevMail:
    """One message of the sink."""

    id: str
    delivered_at: datetime
    date: datetime | None
    sender: str
    to: str
    subject: str
    text: str
    html: str | None

    def as_json(self) -> dict[str, Any]:
        """The JSON shape of `/dev/mail.json`."""
        return {
            "id": self.id,
            "date": (self.date or self.delivered_at).isoformat(),
            "from": self.sender,
            "to": self.to,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
        }


def _part(msg: EmailMessage, subtype: str) -> str | None:
    body = msg.get_body(preferencelist=(subtype,))
    if body is None:
        return None
    try:
        return body.get_content()
    except (LookupError, UnicodeError):  # an unknown or lying charset
        payload = body.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None


def _parse(key: str, raw: bytes, delivered: float) -> DevMail:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    try:
        date = parsedate_to_datetime(str(msg["Date"])) if msg["Date"] else None
    except (TypeError, ValueError):
        date = None
    return DevMail(
        id=key,
        delivered_at=datetime.fromtimestamp(delivered, UTC),
        date=date,
        sender=str(msg["From"] or ""),
        # Bcc'd recipients appear only in the Delivered-To lines a sink adds, not in To.
        to=str(msg["To"] or ", ".join(str(v) for v in msg.get_all("Delivered-To", []))),
        subject=str(msg["Subject"] or ""),
        text=_part(msg, "plain") or "",
        html=_part(msg, "html"),
    )


def _open(directory: Path) -> mailbox.Maildir | None:
    try:
        return mailbox.Maildir(directory, factory=None, create=False)
    except mailbox.NoSuchMailboxError:  # the sink has not received anything yet
        return None


def read_maildir(directory: Path) -> list[DevMail]:
    """Every message of the Maildir, newest delivery first."""
    box = _open(directory)
    if box is None:
        return []
    mails = []
    for key in box.keys():  # noqa: SIM118 - a Maildir is not a dict: iterating it reads every message
        try:
            delivered = box.get_message(key).get_date()
            mails.append(_parse(key, box.get_bytes(key), delivered))
        except (KeyError, FileNotFoundError):  # moved or deleted while we read
            continue
    # Delivery times are precise; the Date header has whole seconds only.
    mails.sort(key=lambda m: (m.delivered_at, m.id), reverse=True)
    return mails


def read_mail(directory: Path, key: str) -> DevMail | None:
    """One message by its Maildir key, or None."""
    box = _open(directory)
    if box is None:
        return None
    try:
        # Maildir looks keys up in its own table of contents: no path is built from `key`.
        return _parse(key, box.get_bytes(key), box.get_message(key).get_date())
    except (KeyError, FileNotFoundError):
        return None


def linkify(text: str) -> Markup:
    """Escape `text` and make every http(s) URL in it a link."""
    out: list[str] = []
    pos = 0
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(".,;:!?)]")
        start, end = match.start(), match.start() + len(url)
        out.append(str(escape(text[pos:start])))
        out.append(f'<a href="{escape(url)}">{escape(url)}</a>')
        pos = end
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))  # noqa: S704 - every piece of the text was escaped above


def loopback_only(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """A guard: the mail viewer shows reset links and invitation codes, so it answers only a
    browser on this machine (the caller's address as `client_ip` reads it, proxies included)."""
    try:
        local = ipaddress.ip_address(client_ip(connection)).is_loopback
    except ValueError:
        local = False
    if not local:
        raise ApiError(404, "not_found", "Nothing was found at this address.")


def _mail_dir(state: State) -> Path:
    directory = state.settings.dev_mail_dir
    if directory is None:  # not registered then; kept as a second lock
        raise ApiError(404, "not_found", "No local mail sink is in use.")
    return Path(directory)


@get("/dev/mail", include_in_schema=False, sync_to_thread=True, operation_id="dev_mail_index", guards=[loopback_only])
def mail_index(state: State, fmt: Annotated[str | None, QueryParameter(name="format")] = None) -> Response[Any]:
    """The sink's messages, newest first: an HTML page, or JSON with `?format=json`."""
    mails = read_maildir(_mail_dir(state))
    if fmt == "json":
        return Response([m.as_json() for m in mails], media_type=MediaType.JSON)
    return Template("dev_mail.html", context={"mails": mails}, media_type=MediaType.HTML)


@get(
    "/dev/mail.json",
    include_in_schema=False,
    sync_to_thread=True,
    operation_id="dev_mail_index_json",
    guards=[loopback_only],
)
def mail_index_json(state: State) -> list[dict[str, Any]]:
    """The sink's messages, newest first, as JSON `[{id, date, from, to, subject, text, html}]`."""
    return [m.as_json() for m in read_maildir(_mail_dir(state))]


@get(
    "/dev/mail/{mail_id:str}",
    include_in_schema=False,
    sync_to_thread=True,
    operation_id="dev_mail_message",
    guards=[loopback_only],
)
def mail_html(state: State, mail_id: str) -> Response[Any]:
    """One message's HTML part as a mail client shows it (its text part when it has none)."""
    mail = read_mail(_mail_dir(state), mail_id)
    if mail is None:
        raise ApiError(404, "not_found", "There is no such message in the local mail sink.")
    if mail.html is None:
        return Template("dev_mail.html", context={"mails": [mail], "single": True}, media_type=MediaType.HTML)
    return Response(mail.html, media_type=MediaType.HTML, headers={"Content-Security-Policy": MAIL_HTML_CSP})


ROUTES = [mail_index, mail_index_json, mail_html]
