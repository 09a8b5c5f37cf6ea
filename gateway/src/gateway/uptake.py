"""Uptake figures as staff read them, as JSON or CSV: linking's counts, with whether the linked
parents sign in, as identity's activity request says (only ids cross)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

from contracts import linking
from contracts.base import utcnow
from gateway.clients import IdentityClient, StaffLinking

ACTIVE_DAYS = 30
COUNTS = (
    "pupils",
    "pupils_with_linked_parent",
    "invitations_pending",
    "invitations_bounced",
    "parents_linked",
    "parents_active_30d",
    "parents_never_signed_in",
)


def _counts(c: linking.UptakeCounts, parents: list[str], signed_in: set[str], active: set[str]) -> dict[str, int]:
    return {
        "pupils": c.pupils,
        "pupils_with_linked_parent": c.pupils_with_linked_parent,
        "invitations_pending": c.invitations_pending,
        "invitations_bounced": c.invitations_bounced,
        "parents_linked": c.parents_linked,
        "parents_active_30d": sum(1 for p in parents if p in active),
        "parents_never_signed_in": sum(1 for p in parents if p not in signed_in),
    }


async def uptake(
    identity: IdentityClient, staff: StaffLinking, *, school_id: str | None, class_id: str | None
) -> dict[str, Any]:
    """`{scope, <counts>, rows: [{school_id|class_id, name, <counts>}]}`."""
    reply = await staff.uptake(school_id=school_id, class_id=class_id)
    signed_in, active = await identity.parent_activity(reply.parent_ids, utcnow() - timedelta(days=ACTIVE_DAYS))
    key = "school_id" if reply.scope == "trust" else "class_id"
    ids = reply.parent_ids
    return {
        "scope": reply.scope,
        **_counts(reply, ids, signed_in, active),
        "rows": [
            {
                key: r.id,
                "name": r.name,
                **_counts(r, [ids[i] for i in r.parents if 0 <= i < len(ids)], signed_in, active),
            }
            for r in reply.rows
        ],
    }


def cell(value: object) -> str:
    # A name a spreadsheet would read as a formula is written as text.
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def as_csv(figures: dict[str, Any]) -> str:
    """One line per row, then the total; the first line names the columns."""
    key = "school_id" if figures["scope"] == "trust" else "class_id"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([key, "name", *COUNTS])
    for row in figures["rows"]:
        writer.writerow([cell(row[key]), cell(row["name"]), *(row[c] for c in COUNTS)])
    writer.writerow(["", "Total", *(figures[c] for c in COUNTS)])
    return out.getvalue()
