"""The committed reference pages (docs/reference/) are the ones the code generates now."""

from __future__ import annotations

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
