"""The language of a page: the signed-in parent's preference, else the school's setting of the
page's context (the code being redeemed), else what the browser's `Accept-Language` prefers,
else English. Staff pages follow the browser. The gateway's catalogue is `gateway/locale/<lang>/LC_MESSAGES/messages.po`."""

from __future__ import annotations

from pathlib import Path

from litestar import Request

from contracts.identity import Principal
from contracts.kit.i18n import DEFAULT_LANGUAGE, LANGUAGES, best_accepted, known, translations, translator

LOCALE_DIR = Path(__file__).parent / "locale"

translate = translator(LOCALE_DIR)


def page_language(request: Request, principal: Principal | None = None, school_language: str | None = None) -> str:
    """The language to show `request`'s page in."""
    if principal is not None:
        chosen = principal.language
        if principal.role == "parent" or chosen != DEFAULT_LANGUAGE:
            return chosen
        # Staff have no preferences to choose with (they are a parent's): their browser decides.
        return best_accepted(request.headers.get("accept-language")) or DEFAULT_LANGUAGE
    if school_language in LANGUAGES:
        return str(school_language)
    return best_accepted(request.headers.get("accept-language")) or DEFAULT_LANGUAGE


def ntranslate(singular: str, plural: str, n: int, lang: str) -> str:
    """The form of `singular`/`plural` for `n` in `lang`."""
    return translations(str(LOCALE_DIR), known(lang)).ngettext(singular, plural, n)
