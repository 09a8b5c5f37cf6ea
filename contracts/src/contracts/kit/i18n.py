"""Languages of what people read: Babel message catalogues, Jinja2's i18n extension and dates.

Every package that renders text (the gateway's pages, notify's emails, linking's QR sheet) keeps
its own catalogue under `<package>/locale/<lang>/LC_MESSAGES/messages.po`, compiled to `.mo`
by `make i18n`; English is the source, so English needs no catalogue.

The language of a rendering is the template variable `lang`: the gettext callables and the date
filters installed here read it from the template's context, so one environment serves every
request at once with no global state (a macro imported `with context` sees it too).
"""

from __future__ import annotations

import functools
import gettext as _gettext
import re
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from jinja2 import Environment, pass_context
from jinja2.runtime import Context

LANGUAGES = ("en", "cy")
DEFAULT_LANGUAGE = "en"

# Parents and staff read dates in the UK first; the texts name no zone unless they say so.
DISPLAY_ZONE = ZoneInfo("Europe/London")


def N_(message: str) -> str:  # noqa: N802 (the usual gettext marker name)
    """Marks a string for extraction that is translated later, where the language is known."""
    return message


def known(lang: str | None) -> str:
    """`lang` if it is one of ours, else the default."""
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


@functools.cache
def translations(locale_dir: str, lang: str) -> _gettext.NullTranslations:
    """The compiled catalogue of `lang` in `locale_dir` (English: the source strings).

    A missing catalogue of a language we offer is a build fault, raised rather than
    silently showing English to someone who asked for Welsh."""
    if known(lang) == DEFAULT_LANGUAGE:
        return _gettext.NullTranslations()
    return _gettext.translation("messages", localedir=locale_dir, languages=[lang])


def best_accepted(header: str | None) -> str | None:
    """The language of ours an `Accept-Language` header prefers, or None when it names none
    (quality 0 means "not this one"; English is also the answer to `*`)."""
    if not header:
        return None
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(header.split(",")[:30]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        lang = DEFAULT_LANGUAGE if primary == "*" else primary
        if lang not in LANGUAGES or not 0 < quality <= 1:
            continue
        # Higher quality wins; between equals, the one named first.
        candidate = (quality, -position, lang)
        if best is None or candidate > best:
            best = candidate
    return best[2] if best else None


def _moment(value: datetime | date | str | None) -> datetime | date | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            if len(value) == 10:
                return date.fromisoformat(value)
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value


def _local(value: datetime | date) -> datetime | date:
    if isinstance(value, datetime):
        return value.astimezone(DISPLAY_ZONE)
    return value


def format_day(value: datetime | date | str | None, lang: str, fmt: str = "d MMM y") -> str:
    """`3 Dec 2026` / `3 Rhag 2026` in the display zone."""
    moment = _moment(value)
    if moment is None:
        return ""
    return format_date(_local(moment), fmt, locale=known(lang))


def format_when(value: datetime | str | None, lang: str, fmt: str = "EEEE d MMMM, HH:mm") -> str:
    """`Wednesday 3 December, 17:00` / `Dydd Mercher 3 Rhagfyr, 17:00` in the display zone."""
    moment = _moment(value)
    if moment is None:
        return ""
    if not isinstance(moment, datetime):
        return format_date(moment, fmt.split(",")[0], locale=known(lang))
    return format_datetime(moment, fmt, tzinfo=DISPLAY_ZONE, locale=known(lang))


def context_lang(context: Context) -> str:
    """The language of a rendering: its `lang` variable."""
    return known(context.get("lang"))


def install(env: Environment, locale_dir: Path) -> None:
    """Jinja2's i18n extension on `env`, translating into the `lang` of each rendering
    (`{% trans %}`, `_()`, `gettext()`, `ngettext()`; new-style: placeholders by name, escaped)."""
    where = str(locale_dir)

    @pass_context
    def gettext(context: Context, message: str) -> str:
        return translations(where, context_lang(context)).gettext(message)

    @pass_context
    def ngettext(context: Context, singular: str, plural: str, n: int) -> str:
        return translations(where, context_lang(context)).ngettext(singular, plural, n)

    @pass_context
    def pgettext(context: Context, ctx: str, message: str) -> str:
        return translations(where, context_lang(context)).pgettext(ctx, message)

    @pass_context
    def npgettext(context: Context, ctx: str, singular: str, plural: str, n: int) -> str:
        return translations(where, context_lang(context)).npgettext(ctx, singular, plural, n)

    @pass_context
    def translate(context: Context, message: Any) -> Any:
        # For a string marked with N_ in Python: no placeholders, so a "%" in it is just a "%"
        # (the gettext callables treat every message as a %-format).
        if not isinstance(message, str) or not message:
            return message
        return translate_sentences(translations(where, context_lang(context)), message)

    env.filters["translate"] = translate
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext, ngettext, newstyle=True, pgettext=pgettext, npgettext=npgettext
    )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def translate_sentences(catalogue: _gettext.NullTranslations, message: str) -> str:
    """`message` translated whole, else sentence by sentence (a service may join two sentences
    the catalogue has each of, like a password's weakness and what to do instead); a sentence
    the catalogue lacks stays as it is."""
    whole = catalogue.gettext(message)
    if whole != message:
        return whole
    sentences = _SENTENCE_END.split(message)
    if len(sentences) == 1:
        return message
    return " ".join(catalogue.gettext(sentence) for sentence in sentences)


def translator(locale_dir: Path) -> Callable[[str, str], str]:
    """`(message, lang) -> translated message`, for text built in Python."""
    where = str(locale_dir)

    def translate(message: str, lang: str) -> str:
        return translate_sentences(translations(where, known(lang)), message)

    return translate


def date_filters() -> dict[str, Any]:
    """`day` and `when` filters that format in the rendering's language."""

    @pass_context
    def day(context: Context, value: datetime | str | None, fmt: str = "d MMM y") -> str:
        return format_day(value, context_lang(context), fmt)

    @pass_context
    def when(context: Context, value: datetime | str | None, fmt: str = "EEEE d MMMM, HH:mm") -> str:
        return format_when(value, context_lang(context), fmt)

    return {"day": day, "when": when}
