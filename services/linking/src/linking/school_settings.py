"""School settings: their defaults, their validation, and acceptable-use policy versions."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any, Literal

from contracts import linking as contract
from linking.tables import SchoolSetting, TrustSetting

DEFAULT_MAX_CARERS = 4
DEFAULT_PRINTED_CODE_DAYS = 30
DEFAULT_INVITATION_DAYS = 14
DEFAULT_EMAIL_ON_REMOVAL = True
DEFAULT_LANGUAGE: Literal["en", "cy"] = "en"

DEFAULT_AUP = """\
Parent Portal: acceptable use

By using Parent Portal you agree to the following.

1. You use Parent Portal only to follow the schoolwork of children you are the parent or
   carer of, and only while the school allows it.
2. You keep your password to yourself and do not share your account. Each parent or carer
   has an account of their own.
3. What you see about a child (homework, messages, stars) is confidential. You do not share
   it, copy it to public places, or use it to identify other children.
4. You tell the school at once if you can see a child who is not yours, or if you think
   someone else uses your account.
5. The school may remove your access at any time, for example when a court order or a
   safeguarding concern requires it. Removals and links are recorded.
6. Your name and email address are used only to run Parent Portal and to contact you about
   it; the school is responsible for this data.
"""


def aup_version(text: str) -> str:
    """A short version of a policy text: it changes whenever the text does."""
    return hashlib.sha256(text.strip().encode()).hexdigest()[:12]


DEFAULT_AUP_VERSION = aup_version(DEFAULT_AUP)

_INT_FIELDS = ("max_carers_per_code", "printed_code_days", "invitation_days")
_URL_FIELDS = ("homework_url", "files_url", "messages_url")
EDITABLE = (*_INT_FIELDS, "aup_text", *_URL_FIELDS, "email_parent_on_removal", "language")


@dataclass
class Effective:
    """A school's settings with every default filled in."""

    school_id: str
    max_carers_per_code: int
    printed_code_days: int
    invitation_days: int
    aup_text: str
    homework_url: str
    files_url: str
    messages_url: str
    email_parent_on_removal: bool
    language: Literal["en", "cy"] = DEFAULT_LANGUAGE
    updated_at: Any = None

    @property
    def aup_version(self) -> str:
        """The version of this school's policy."""
        return aup_version(self.aup_text)

    def reply(self) -> contract.SchoolSettings:
        """As `GET /schools/{id}/settings` answers."""
        return contract.SchoolSettings(
            school_id=self.school_id,
            max_carers_per_code=self.max_carers_per_code,
            printed_code_days=self.printed_code_days,
            invitation_days=self.invitation_days,
            aup_text=self.aup_text,
            aup_version=self.aup_version,
            homework_url=self.homework_url,
            files_url=self.files_url,
            messages_url=self.messages_url,
            email_parent_on_removal=self.email_parent_on_removal,
            language=self.language,
            updated_at=self.updated_at,
        )


def effective(
    school_id: str, row: SchoolSetting | None, *, platform_url: str, trust_row: TrustSetting | None = None
) -> Effective:
    """The settings a school has now: each key its own value, else its trust's, else the default."""
    links = contract.default_link_templates(platform_url)
    defaults: dict[str, Any] = {
        "max_carers_per_code": DEFAULT_MAX_CARERS,
        "printed_code_days": DEFAULT_PRINTED_CODE_DAYS,
        "invitation_days": DEFAULT_INVITATION_DAYS,
        "aup_text": DEFAULT_AUP,
        "email_parent_on_removal": DEFAULT_EMAIL_ON_REMOVAL,
        "language": DEFAULT_LANGUAGE,
        **links,
    }
    values: dict[str, Any] = {}
    for name, default in defaults.items():
        own = getattr(row, name, None) if row is not None else None
        trusts = getattr(trust_row, name, None) if trust_row is not None else None
        values[name] = own if own is not None else trusts if trusts is not None else default
    updated = [r.updated_at for r in (row, trust_row) if r is not None]
    return Effective(school_id=school_id, updated_at=max(updated) if updated else None, **values)


class Invalid(ValueError):
    """Some submitted settings are not acceptable; `problems` names each field."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


# A setting that takes one of a few values: the values, and the words when it is another.
_CHOICES: dict[str, tuple[tuple[Any, ...], str]] = {
    "email_parent_on_removal": ((True, False), "must be true or false"),
    "language": (contract.SCHOOL_LANGUAGES, "must be one of " + ", ".join(contract.SCHOOL_LANGUAGES)),
}


def validate(changes: dict[str, Any]) -> dict[str, Any]:
    """The submitted changes, checked and cleaned; raises `Invalid` naming every bad field."""
    problems: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name in ("school_id", "aup_version", "updated_at"):
            continue  # read-only fields echoed back from a GET are harmless
        if name not in EDITABLE:
            problems[name] = "unknown setting"
        elif name in _INT_FIELDS:
            low, high = contract.SETTINGS_LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int):
                problems[name] = "must be a whole number"
            elif not low <= value <= high:
                problems[name] = f"must be between {low} and {high}"
            else:
                clean[name] = value
        elif name in _CHOICES:
            allowed, words = _CHOICES[name]
            # bool is an int: `True in (1, 2)` would pass, so the type is checked too.
            if type(value) not in {type(x) for x in allowed} or value not in allowed:
                problems[name] = words
            else:
                clean[name] = value
        elif name == "aup_text":
            if not isinstance(value, str) or not value.strip():
                problems[name] = "must be a non-empty text"
            elif len(value) > contract.AUP_MAX_CHARS:
                problems[name] = f"must be at most {contract.AUP_MAX_CHARS} characters"
            else:
                clean[name] = value.strip() + "\n"
        else:
            problem = _url_problem(value)
            if problem:
                problems[name] = problem
            else:
                clean[name] = value.strip()
    if problems:
        raise Invalid(problems)
    return clean


def _url_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "must be a URL"
    value = value.strip()
    if len(value) > contract.URL_MAX_CHARS:
        return f"must be at most {contract.URL_MAX_CHARS} characters"
    if not value.startswith(("https://", "http://")) or len(value.split("://", 1)[1]) < 1:
        return "must start with https:// or http://"
    if any(c.isspace() for c in value):
        return "must not contain spaces"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError:
        return "has an unbalanced { or }"
    if set(fields) != {"pupil_id"}:
        return "must contain {pupil_id} and no other placeholder"
    return None


def invitation_language(school_language: str) -> dict[str, Any]:
    """How an invitation email of a school in `school_language` is written: a Welsh school's in
    Welsh and English side by side (the parent's own language is not known yet)."""
    if school_language == "cy":
        return {"language": "cy", "bilingual": True}
    return {"language": "en"}
