"""Staff pages for running it at scale: uptake with charts a head teacher would put in a
governors' report (SVG drawn here, no script) and its CSV download."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Template

from contracts.identity import Principal
from gateway import uptake as figures
from gateway.auth import staff_only
from gateway.clients import Clients, StaffLinking
from gateway.errors import checked_id
from gateway.pages.common import render

STAFF = [staff_only]
BAR_WIDTH = 360  # px of a full bar


def _share(part: int, whole: int) -> int:
    """A whole percentage (0 of 0 is 0 %)."""
    return round(100 * part / whole) if whole else 0


def chart_rows(found: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row's figures with the bar lengths the SVG draws."""
    out = []
    key = "school_id" if found["scope"] == "trust" else "class_id"
    for row in found["rows"]:
        linked = _share(row["pupils_with_linked_parent"], row["pupils"])
        active = _share(row["parents_active_30d"], row["parents_linked"])
        out.append(
            {
                **row,
                "id": row[key],
                "linked_share": linked,
                "active_share": active,
                "linked_px": BAR_WIDTH * linked // 100,
                "active_px": BAR_WIDTH * active // 100,
            }
        )
    return out


@get("/uptake", include_in_schema=False, guards=STAFF, operation_id="page_uptake")
async def uptake_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    school_id: FromQuery[str | None] = None,
) -> Template:
    """The caller's uptake (a trust admin: a row per school, each opening the school's classes)."""
    sid = None if school_id is None else checked_id(school_id)
    found = await figures.uptake(clients.identity, staff, school_id=sid, class_id=None)
    csv_href = "/api/v1/uptake?format=csv" + (f"&school_id={sid}" if sid else "")
    return render(
        request,
        "pages/uptake.html",
        principal=principal,
        found=found,
        rows=chart_rows(found),
        linked_share=_share(found["pupils_with_linked_parent"], found["pupils"]),
        active_share=_share(found["parents_active_30d"], found["parents_linked"]),
        bar_width=BAR_WIDTH,
        csv_href=csv_href,
        school_id=sid,
    )


ROUTES = [uptake_page]
