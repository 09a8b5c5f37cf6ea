"""Class sheets: one cut-out card per pupil, as a printable HTML page and as an A4 PDF.

A Welsh school's sheet (its setting `language` `cy`) has every text in Welsh and English, Welsh
first; the texts are in linking's catalogue (`linking/locale`)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from babel.dates import format_date
from fpdf import FPDF

from contracts.kit import i18n
from contracts.kit.i18n import N_
from linking.qr import Rendering

LOCALE_DIR = Path(__file__).parent / "locale"

TITLE = N_("QR codes: {class_name}, {school_name}")
INTRO = N_(
    "Print, cut along the dashed lines and give each card to the pupil's parents or carers. "
    "Printing again prints the same codes."
)
PRINT = N_("Print")
QR_LABEL = N_("QR code for {pupil}")
USE_BY = N_("Use by {date}")
STEP_1 = N_(
    'Scan the QR code with your phone\'s camera, or go to {host}, log in and choose "Add a child", then type the code.'
)
STEP_2 = N_("Register or log in, check it is your child and say how you are related.")
PDF_STEPS = N_(
    '1. Scan the QR code with your phone\'s camera, or go to {host}, log in, choose "Add a child" and type the code.\n'
    "2. Register or log in, check it is your child and say how you are related."
)
# Two languages on a 95 x 55 mm card leave room for one short line each.
PDF_STEPS_SHORT = N_('Scan the QR code, or go to {host} and choose "Add a child".')


def languages(language: str) -> list[str]:
    """The languages of a school's sheet, in order: Welsh then English for a Welsh school."""
    return ["cy", "en"] if language == "cy" else ["en"]


def _t(message: str, lang: str, **values: Any) -> str:
    return i18n.translations(str(LOCALE_DIR), i18n.known(lang)).gettext(message).format(**values)


def _cards_count(count: int, lang: str) -> str:
    return (
        i18n.translations(str(LOCALE_DIR), i18n.known(lang))
        .ngettext("{count} card", "{count} cards", count)
        .format(count=count)
    )


@dataclass(frozen=True)
class Card:
    """What one pupil's card shows."""

    pupil_name: str
    class_name: str
    school_name: str
    code: str  # XXXX-XXXX-XXXX
    url: str
    expires_at: datetime
    timezone: str  # the school's: the day the code expires there
    qr: Rendering

    def expires(self, lang: str = "en") -> str:
        """`31 December 2026` / `31 Rhagfyr 2026`."""
        return expiry_date(self.expires_at, self.timezone, lang)

    @property
    def svg(self) -> str:
        """The QR code as inline SVG."""
        return self.qr.svg()


def expiry_date(at: datetime, timezone: str, lang: str = "en") -> str:
    """`31 December 2026`: the day a code expires, where the school is (in `lang`)."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = at.astimezone(zone)
    return format_date(local.date(), "d MMMM y", locale=i18n.known(lang))


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("linking", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(cards: list[Card], *, class_name: str, school_name: str, host: str, language: str = "en") -> str:
    """The printable page, in the school's language(s)."""
    langs = languages(language)
    texts = [
        {
            "lang": lang,
            "title": _t(TITLE, lang, class_name=class_name, school_name=school_name),
            "intro": _cards_count(len(cards), lang) + ". " + _t(INTRO, lang),
            "print": _t(PRINT, lang),
            "step_1": _t(STEP_1, lang, host=host),
            "step_2": _t(STEP_2, lang),
        }
        for lang in langs
    ]
    return _env.get_template("qr_sheet.html").render(
        cards=cards,
        host=host,
        lang=langs[0],
        texts=texts,
        title=" / ".join(t["title"] for t in texts),
        use_by=lambda card: " / ".join(_t(USE_BY, lang, date=card.expires(lang)) for lang in langs),
        qr_label=lambda card: " / ".join(_t(QR_LABEL, lang, pupil=card.pupil_name) for lang in langs),
    )


# -- PDF -----------------------------------------------------------------------------------------
# A4 portrait, 2 columns x 5 rows of 95 x 55 mm cards (business-card size) inside 10 mm margins.

PAGE_W, PAGE_H = 210.0, 297.0
COLS, ROWS = 2, 5
CARD_W, CARD_H = 95.0, 55.0
MARGIN_X = (PAGE_W - COLS * CARD_W) / 2
MARGIN_Y = (PAGE_H - ROWS * CARD_H) / 2
# A module is 1/25 inch and every QR code starts on a 1/150-inch grid from the page's top-left
# corner: at 150, 300 or 600 dpi each module is then a whole number of dots with sharp edges.
# Unaligned, about one code in a hundred came out too blurred for zbar at 150 dpi.
MODULE_MM = 25.4 / 25
GRID_MM = 25.4 / 150


def _on_grid(mm: float) -> float:
    return round(mm / GRID_MM) * GRID_MM


# Letters outside Windows-1252 (the PDF core fonts' set) that do not decompose into a base
# letter and an accent.
_FALLBACK = str.maketrans({"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "ı": "i", "Ŧ": "T", "ŧ": "t"})


def pdf_text(text: str) -> str:
    """Text the PDF's core font can show: accents kept where Windows-1252 has them."""
    try:
        text.encode("cp1252")
        return text
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text.translate(_FALLBACK):
        try:
            ch.encode("cp1252")
            out.append(ch)
        except UnicodeEncodeError:
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            try:
                base.encode("cp1252")
                out.append(base or "?")
            except UnicodeEncodeError:
                out.append("?")
    return "".join(out)


def _fit(pdf: FPDF, text: str, width: float) -> str:
    """`text` cut with an ellipsis to fit `width` in the current font."""
    if pdf.get_string_width(text) <= width:
        return text
    while text and pdf.get_string_width(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def _wrap(pdf: FPDF, text: str, width: float) -> list[str]:
    """Greedy word wrap in the current font."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and pdf.get_string_width(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def render_pdf(cards: list[Card], *, class_name: str, school_name: str, host: str, language: str = "en") -> bytes:
    """The same cards as an A4 PDF."""
    langs = languages(language)
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margins(0, 0, 0)
    pdf.set_title(
        pdf_text(" / ".join(_t(TITLE, lang, class_name=class_name, school_name=school_name) for lang in langs))
    )
    pdf.set_lang(langs[0])
    pdf.set_creator("Parent Portal")
    pdf.set_line_width(0.2)
    pdf.set_draw_color(150, 150, 150)
    k = pdf.k
    per_page = COLS * ROWS
    instructions: list[str] | None = None
    # Text goes in with FPDF.text (a positioned string): cell and multi_cell's layout engine
    # costs ~6 ms a card, which alone would take a sheet past its 100 ms.
    for i, card in enumerate(cards):
        if i % per_page == 0:
            pdf.add_page()
        slot = i % per_page
        x = MARGIN_X + (slot % COLS) * CARD_W
        y = MARGIN_Y + (slot // COLS) * CARD_H
        pdf.set_dash_pattern(dash=1.5, gap=1.5)
        pdf.rect(x, y, CARD_W, CARD_H)
        pdf.set_dash_pattern()

        # The QR code: fpdf2's public drawing API builds an object per rectangle (~60 ms a
        # sheet); the cached operators of qr.Rendering.pdf_ops go in as they are (~0.1 ms).
        modules, ops = card.qr.pdf_ops()
        qr_mm = modules * MODULE_MM
        qx, qy = _on_grid(x + 1.0), _on_grid(y + (CARD_H - qr_mm) / 2)
        scale = MODULE_MM * k
        pdf._out(f"q 0 g {scale:.5f} 0 0 {scale:.5f} {qx * k:.4f} {(PAGE_H - qy - qr_mm) * k:.4f} cm {ops} Q")  # noqa: SLF001 - fpdf2 has no public way to add raw content-stream operators

        # The quiet zone (4 modules) is white space enough between the code and the text.
        tx = qx + qr_mm - 2.0
        tw = x + CARD_W - 3.0 - tx
        ty = y + 7.0  # baselines from here down
        pdf.set_text_color(85, 85, 85)
        pdf.set_font("helvetica", "B", 8)
        pdf.text(tx, ty, _fit(pdf, pdf_text(card.school_name), tw))
        pdf.set_text_color(26, 26, 26)
        pdf.set_font("helvetica", "B", 12)
        name_lines = _wrap(pdf, pdf_text(card.pupil_name), tw)[:2]
        for line in name_lines:
            ty += 5.0
            pdf.text(tx, ty, _fit(pdf, line, tw))
        pdf.set_text_color(85, 85, 85)
        pdf.set_font("helvetica", "", 8.5)
        ty += 4.0
        pdf.text(tx, ty, _fit(pdf, pdf_text(card.class_name), tw))
        pdf.set_text_color(26, 26, 26)
        pdf.set_font("courier", "B", 12.5)
        ty += 6.5
        pdf.text(tx, ty, card.code)
        pdf.set_font("helvetica", "", 8)
        ty += 4.5
        # A line a language: both on one would not fit the card.
        for n, lang in enumerate(langs):
            ty += 3.5 if n else 0.0
            pdf.text(tx, ty, _fit(pdf, pdf_text(_t(USE_BY, lang, date=card.expires(lang))), tw))
        pdf.set_font("helvetica", "", 6.8)
        if instructions is None:
            if len(langs) == 1:
                instructions = _wrap(pdf, pdf_text(_t(PDF_STEPS, langs[0], host=host)), tw)
            else:
                instructions = _wrap(
                    pdf, pdf_text("\n".join(_t(PDF_STEPS_SHORT, lang, host=host) for lang in langs)), tw
                )
        ty += 1.0
        for line in instructions:
            ty += 3.0
            pdf.text(tx, ty, line)
    return bytes(pdf.output())
