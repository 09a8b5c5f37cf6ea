"""Rendering email requests into MIME messages: plain text and HTML, from Jinja2 templates.

Requests carry text from people (a parent's name, a pupil's, a school's). None of it can add a
header or a recipient: a display name that is not a name (contracts.names: a line break, a
control or invisible character) is left out and the email goes to the bare address; line breaks
in a subject become spaces; addresses are built with `email.headerregistry.Address`, which
quotes what needs quoting. What still cannot become an email (an address that is not one, or
that needs SMTPUTF8) raises `RenderError`, which the sender treats as final.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from email import policy
from email.headerregistry import Address
from email.parser import BytesHeaderParser
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.dates import format_date as format_date_babel
from babel.dates import format_datetime as format_datetime_babel
from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from markupsafe import Markup

from contracts.addresses import looks_like_email
from contracts.base import utcnow
from contracts.kit import i18n
from contracts.kit.i18n import N_
from contracts.names import problem_with_name
from contracts.notify import DigestEmail, EmailRequest

SUBJECTS = {
    "verification": N_("Confirm your email address for Parent Portal"),
    "account_exists": N_("You already have a Parent Portal account"),
    "password_reset": N_("Reset your Parent Portal password"),
    "set_password": N_("Set your Parent Portal password"),
    "password_changed": N_("Your Parent Portal password was changed"),
    "invitation": N_("{school_name} invites you to see {pupil_first_name}'s schoolwork"),
    "link_activated": N_("You can now see {pupil_first_name}'s homework, messages and stars"),
    "link_removed": N_("Your access to {pupil_first_name}'s account has ended"),
    # The digest's subject says its schedule: `digest_weekly` or `digest_daily`.
    "digest_weekly": N_("Your weekly Parent Portal summary"),
    "digest_daily": N_("Your daily Parent Portal summary"),
}

TITLE = N_("Parent Portal")
FOOTER = N_(
    "This email was sent by Parent Portal on behalf of your child's school. "
    "If you were not expecting it, you can ignore it."
)

LOCALE_DIR = Path(__file__).parent / "locale"
translate = i18n.translator(LOCALE_DIR)

# Dates in emails are read by parents in the UK first; the zone is named in the text.
DISPLAY_ZONE = i18n.DISPLAY_ZONE
# Welsh: no weekday, which would mutate after "tan" (until).
_WHEN = {"en": "EEEE d MMMM y 'at' HH:mm", "cy": "d MMMM y 'am' HH:mm"}


def when(value: datetime, lang: str) -> str:
    """`Thursday 3 December 2026 at 17:00 (GMT)` in `lang`."""
    local = value.astimezone(DISPLAY_ZONE)
    lang = i18n.known(lang)
    return i18n.format_when(value, lang, _WHEN[lang]) + f" ({local.tzname()})"


@pass_context
def _when(context: Context, value: datetime) -> str:
    return when(value, i18n.context_lang(context))


@pass_context
def _local(context: Context, value: datetime, timezone: str) -> str:
    """A time in the school's timezone (the digest names the zone once, not on every line)."""
    return _local_text(value, timezone, i18n.context_lang(context))


# A school's digests show the same few moments (the class's homework, the week's messages):
# each is formatted once, not once per parent.
@functools.lru_cache(maxsize=4096)
def _local_text(value: datetime, timezone: str, lang: str) -> str:
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = DISPLAY_ZONE
    return format_datetime_babel(value, "EEE d MMM, HH:mm", tzinfo=zone, locale=lang)


# Welsh: no weekday, which would mutate after "ar" (on): "ar ddydd Gwener".
_DAY = {"en": "EEEE d MMMM y", "cy": "d MMMM y"}


@pass_context
def _day(context: Context, value: date) -> str:
    return _day_text(value, i18n.context_lang(context))


@functools.lru_cache(maxsize=1024)
def _day_text(value: date, lang: str) -> str:
    return format_date_babel(value, _DAY.get(lang, _DAY["en"]), locale=lang)


def message_id(request_id: str, recipient: str, domain: str) -> str:
    """The same Message-ID for the same (request, recipient), whoever sends it and however often."""
    digest = hashlib.sha256(f"{request_id}\x00{recipient.lower()}".encode()).hexdigest()[:40]
    return f"<{digest}@{domain}>"


class RenderError(Exception):
    """This request cannot become an email, however often it is tried. `str()` names no address."""


@dataclass(frozen=True)
class Rendered:
    """An email ready for SMTP."""

    message_id: str
    content: bytes
    recipient: str  # the envelope address, as in the To header (an IDN domain in its ASCII form)


def _address(value: str) -> Address:
    """`value` as an address fit for a header and an SMTP command, or `RenderError`."""
    value = value.strip()
    if not looks_like_email(value) or any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise RenderError("the recipient is not an email address")
    local, domain = value.rsplit("@", 1)
    if not local.isascii():
        raise RenderError("the recipient's address has non-ASCII characters in its local part (needs SMTPUTF8)")
    try:
        domain = domain.encode("idna").decode("ascii")
        return Address(username=local, domain=domain)
    except (UnicodeError, ValueError) as exc:  # email.errors' header defects are ValueErrors
        raise RenderError(f"the recipient's address cannot be written in a header ({type(exc).__name__})") from exc


def display_name(name: str | None) -> str:
    """The name to greet and address someone by, or "" when `name` is not a name."""
    if not name or problem_with_name(name) is not None:
        return ""
    # Python's email package decodes RFC 2047 encoded words ("=?utf-8?q?...?=") in a header it
    # is given, even from a display name, and writes what they decode to unquoted: such a
    # "name" could add a Bcc or a recipient to the To header. No one is called that.
    if "=?" in name:
        return ""
    return name.strip()


_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: str) -> str:
    """`text` for a header: line breaks and other control characters as single spaces, and no
    RFC 2047 encoded word (Python's email package decodes "=?utf-8?q?=0A...?=" in a header it
    is given and, before 3.11.10, writes the line break it decodes to)."""
    return " ".join(_BREAKS.sub(" ", text).split()).replace("=?", "= ?")


_HEADERS = [
    "Subject",
    "From",
    "To",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "Content-Language",
    "MIME-Version",
    "Content-Type",
]
# RFC 8058: a mail program's one-click unsubscribe POSTs "List-Unsubscribe=One-Click" to the URL.
_LIST_HEADERS = ["List-Unsubscribe", "List-Unsubscribe-Post"]


def _check(content: bytes, recipient: str, headers: list[str]) -> None:
    """Read the message back as a mail program would: exactly our headers, one recipient.
    Only the top-level headers are read back, which is where a recipient could be added: parsing
    the bodies as well took two thirds of an email's rendering (10 of 15 ms) for nothing."""
    msg = BytesHeaderParser(policy=policy.default).parsebytes(content)
    if sorted(msg.keys()) != sorted(headers):
        raise RenderError("the message's headers are not the ones written")
    if [a.addr_spec for a in msg["To"].addresses] != [recipient]:
        raise RenderError("the message's To header is not its one recipient")


def _fold_uncached(name: str, value: object) -> str:
    """One header as the email package writes it: quoted, encoded (RFC 2047) and folded."""
    return policy.default.fold(*policy.default.header_store_parse(name, value))


@functools.lru_cache(maxsize=512)
def _fold(name: str, value: str) -> str:
    """`_fold_uncached` for the headers many emails share (a subject, the sender)."""
    return _fold_uncached(name, value)


def _qp(text: str) -> bytes:
    """A body in quoted-printable: what the email package chooses for our mostly-ASCII text."""
    return binascii.b2a_qp(text.encode(), istext=True)


def _mime(header_lines: list[str], languages: str, text: str, html: str) -> bytes:
    """The message: our headers, then the text and the HTML as multipart/alternative.

    Written out here rather than by `email.message.EmailMessage`, which took two thirds of an
    email's rendering to write the same bytes. Every header that carries text from a request
    is still written by the email package (`_fold`); the bodies are quoted-printable, in which
    a "=" is always followed by two hex digits or a line break, so neither body can contain
    the boundary's "==".
    """
    boundary = f"==============={random.randrange(10**18, 10**19)}=="  # noqa: S311 - a separator, not a secret
    return b"".join(
        [
            "".join(header_lines).encode("ascii"),
            (
                "MIME-Version: 1.0\n"
                f'Content-Type: multipart/alternative;\n boundary="{boundary}"\n'
                f"Content-Language: {languages}\n"
                "\n"
                f"--{boundary}\n"
                'Content-Type: text/plain; charset="utf-8"\n'
                "Content-Transfer-Encoding: quoted-printable\n"
                "\n"
            ).encode(),
            _qp(text if text.endswith("\n") else text + "\n"),
            (
                f"\n--{boundary}\n"
                'Content-Type: text/html; charset="utf-8"\n'
                "Content-Transfer-Encoding: quoted-printable\n"
                "\n"
            ).encode(),
            _qp(html if html.endswith("\n") else html + "\n"),
            f"\n--{boundary}--\n".encode(),
        ]
    )


class Renderer:
    """Turns a request into the bytes that go over SMTP."""

    def __init__(self, *, mail_from: str, mail_from_name: str = "Parent Portal") -> None:
        try:
            # Checked once here: a bad PORTAL_MAIL_FROM stops the service rather than failing every email.
            self.sender = Address(display_name=mail_from_name, addr_spec=mail_from)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"PORTAL_MAIL_FROM {mail_from!r} is not an email address") from exc
        self.mail_from = mail_from
        self.mail_from_name = mail_from_name
        self.domain = self.sender.domain or "parent-portal.localhost"
        self._from = _fold_uncached("From", self.sender)
        self.env = Environment(
            loader=PackageLoader("notify", "templates"),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            # The templates are part of the package: no looking at their files before every email.
            auto_reload=False,
        )
        i18n.install(self.env, LOCALE_DIR)
        self.env.policies["ext.i18n.trimmed"] = True
        self.env.filters["when"] = _when
        self.env.filters["local"] = _local
        self.env.filters["day"] = _day

    def render(
        self, request: EmailRequest, *, recipient: str, recipient_name: str | None, language: str | None = None
    ) -> Rendered:
        """The email for `request` to `recipient`; `RenderError` when there can be none.

        Its language is the request's, else `language` (the recipient's own, when known), else
        English; a bilingual request has its language first, then English."""
        try:
            return self._render(request, recipient=recipient, recipient_name=recipient_name, language=language)
        except RenderError:
            raise
        except Exception as exc:  # a template or header the request breaks: trying again changes nothing
            raise RenderError(f"{request.kind} cannot be rendered: {type(exc).__name__}") from exc

    def _render(
        self, request: EmailRequest, *, recipient: str, recipient_name: str | None, language: str | None
    ) -> Rendered:
        to = _address(recipient)
        name = display_name(recipient_name)
        kind = request.kind
        values = request.model_dump()
        values["recipient_name"] = name
        first = i18n.known(request.language or language)
        langs = [first, "en"] if request.bilingual and first != "en" else [first]
        subject_key = f"{kind}_{request.schedule}" if isinstance(request, DigestEmail) else kind
        subject = one_line(" / ".join(translate(SUBJECTS[subject_key], lang).format(**values) for lang in langs))
        values["subject"] = subject
        text_template = self.env.get_template(f"{kind}.txt")
        text = "\n\n* * *\n\n".join(text_template.render(**values, lang=lang) for lang in langs)
        html_template = self.env.get_template(f"{kind}.html")
        sections = []
        for lang in langs:
            # Each language's body, in the one frame of base.html.
            context = html_template.new_context({**values, "lang": lang})
            # The block rendered by an autoescaping template: already safe HTML.
            body = Markup("".join(html_template.blocks["body"](context)))  # noqa: S704
            sections.append(
                {"lang": lang, "body": body, "title": translate(TITLE, lang), "footer": translate(FOOTER, lang)}
            )
        html = self.env.get_template("base.html").render(**values, lang=first, sections=sections)
        mid = message_id(request.event_id, recipient, self.domain)
        lines = [
            _fold("Subject", subject),
            self._from,
            _fold_uncached("To", Address(display_name=name, username=to.username, domain=to.domain)),
            f"Date: {format_datetime(utcnow())}\n",
            f"Message-ID: {mid}\n",
            # Tells mail systems not to answer with out-of-office replies.
            "Auto-Submitted: auto-generated\n",
        ]
        headers = _HEADERS
        if isinstance(request, DigestEmail):
            url = one_line(request.unsubscribe_url)
            if not url.startswith(("https://", "http://")) or any(ch in url for ch in "<> ,"):
                raise RenderError("the unsubscribe link is not a URL")
            lines.append(_fold_uncached("List-Unsubscribe", f"<{url}>"))
            lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click\n")
            headers = [*_HEADERS, *_LIST_HEADERS]
        content = _mime(lines, ", ".join(langs), text, html)
        _check(content, to.addr_spec, headers)
        return Rendered(mid, content, to.addr_spec)
