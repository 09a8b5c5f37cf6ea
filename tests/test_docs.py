"""The committed reference pages (docs/reference/) are the ones the code generates now, and the
documentation's links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portal import docs

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return docs.render_pages()


@pytest.mark.parametrize("name", docs.PAGES)
def test_committed_reference_page_is_current(pages: dict[str, str], name: str) -> None:
    committed = REFERENCE / name
    assert committed.exists(), f"{committed.relative_to(ROOT)} is missing: run `make docs` and commit it"
    assert committed.read_text(encoding="utf-8") == pages[name], (
        f"{committed.relative_to(ROOT)} is stale: run `make docs` and commit it"
    )


def test_no_reference_page_is_left_over() -> None:
    extra = sorted(p.name for p in REFERENCE.glob("*.md") if p.name not in docs.PAGES)
    assert not extra, f"docs/reference/ holds pages `make docs` no longer writes: {extra}"


def test_reference_pages_cover_the_code(pages: dict[str, str]) -> None:
    from contracts import platform
    from contracts.kit.settings import CommonSettings

    for rpc in docs.rpc_declarations():
        assert f"### {rpc.subject}\n" in pages["requests.md"], rpc.subject
    for subject in platform.SCHEMAS:
        assert f"### {subject}\n" in pages["events.md"], subject
    for name in CommonSettings.model_fields:
        assert f"`PORTAL_{name.upper()}`" in pages["settings.md"], name
    for operation in ("`GET /api/v1/me/overview`", "`POST /api/v1/auth/login`", "`GET /ready`"):
        assert f"### {operation}\n" in pages["http.md"], operation
    assert "## portal roster import\n" in pages["cli.md"]


_LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
_HEADING = re.compile(r"^#{1,6} (.+)$", re.M)


def _markdown_files() -> list[Path]:
    readmes = [ROOT / "README.md", *ROOT.glob("*/README.md"), *ROOT.glob("services/*/README.md")]
    return sorted([*readmes, *(ROOT / "docs").rglob("*.md")])


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {docs._slug(h) for h in _HEADING.findall(text)}


def test_links_in_the_documentation_lead_somewhere() -> None:
    broken = []
    for page in _markdown_files():
        for target, anchor in _LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            path = (page.parent / target) if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, "links that lead nowhere: " + ", ".join(broken)


# Outside the gateway and linking, whose sources are being reorganised.
CHECKED_FOR_API_MD = ("README.md", "docs", "contracts", "deploy", "tests", "services", "gateway", "bench")


def test_nothing_cites_the_missing_api_document() -> None:
    missing = "API" + ".md"
    citing = []
    for name in CHECKED_FOR_API_MD:
        path = ROOT / name
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".py", ".md", ".json", ".html")]
        )
        citing += [str(f.relative_to(ROOT)) for f in files if missing in f.read_text(encoding="utf-8")]
    assert not citing, f"these cite {missing}, which does not exist; point them into docs/: " + ", ".join(citing)
