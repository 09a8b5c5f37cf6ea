"""Rendering email requests into MIME messages: plain text and HTML, from Jinja2 templates."""

from __future__ import annotations

import hashlib
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from contracts.base import utcnow
from contracts.notify import EmailRequest

SUBJECTS = {
    "verification": "Confirm your email address for Parent Portal",
    "account_exists": "You already have a Parent Portal account",
    "password_reset": "Reset your Parent Portal password",
    "set_password": "Set your Parent Portal password",
    "password_changed": "Your Parent Portal password was changed",
    "invitation": "{school_name} invites you to see {pupil_first_name}'s schoolwork",
    "link_activated": "You can now see {pupil_first_name}'s homework, messages and stars",
    "link_removed": "Your access to {pupil_first_name}'s account has ended",
}

# Dates in emails are read by parents in the UK first; the zone is named in the text.
DISPLAY_ZONE = ZoneInfo("Europe/London")


def _when(value: datetime) -> str:
    local = value.astimezone(DISPLAY_ZONE)
    return local.strftime("%A %-d %B %Y at %H:%M") + f" ({local.tzname()})"


def message_id(request_id: str, recipient: str, domain: str) -> str:
    """The same Message-ID for the same (request, recipient), whoever sends it and however often."""
    digest = hashlib.sha256(f"{request_id}\x00{recipient.lower()}".encode()).hexdigest()[:40]
    return f"<{digest}@{domain}>"


class Renderer:
    """Turns a request into the bytes that go over SMTP."""

    def __init__(self, *, mail_from: str, mail_from_name: str = "Parent Portal") -> None:
        self.mail_from = mail_from
        self.mail_from_name = mail_from_name
        self.domain = mail_from.rsplit("@", 1)[-1] or "parent-portal.localhost"
        self.env = Environment(
            loader=PackageLoader("notify", "templates"),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when

    def render(self, request: EmailRequest, *, recipient: str, recipient_name: str | None) -> tuple[str, bytes]:
        """(Message-ID, the whole RFC 5322 message) for `request` to `recipient`."""
        kind = request.kind
        values = request.model_dump()
        values["recipient_name"] = recipient_name or ""
        subject = SUBJECTS[kind].format(**values)
        values["subject"] = subject
        text = self.env.get_template(f"{kind}.txt").render(**values)
        html = self.env.get_template(f"{kind}.html").render(**values)
        mid = message_id(request.event_id, recipient, self.domain)
        msg = EmailMessage()
        msg["Subject"] = subject
        msg["From"] = formataddr((self.mail_from_name, self.mail_from))
        msg["To"] = formataddr((recipient_name or "", recipient))
        msg["Date"] = format_datetime(utcnow())
        msg["Message-ID"] = mid
        # Tells mail systems not to answer with out-of-office replies.
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return mid, msg.as_bytes()
