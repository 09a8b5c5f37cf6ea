"""Uptake figures as staff read them, as JSON or CSV: linking's counts, with whether the linked
parents sign in, as identity's activity request says (only ids cross)."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from contracts import identity, linking
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


# Linked parents asked of linking at once (it sends fewer when they would not fit one NATS
# message); identity is asked about each page in one request (it takes as many).
PAGE = linking.MAX_UPTAKE_PARENTS


class _Signs:
    """How many of a scope's (or a row's) linked parents were active, and never signed in."""

    def __init__(self) -> None:
        self.active = 0
        self.never = 0

    def add(self, states: str, positions: Iterable[int] | None = None) -> None:
        """Count the parents at `positions` of a page (all of it when None) by their states."""
        if positions is not None:
            n = len(states)
            states = "".join([states[i] for i in positions if 0 <= i < n])
        self.active += states.count(identity.ACTIVE)
        self.never += states.count(identity.NEVER_SIGNED_IN)


def _counts(c: linking.UptakeCounts, signs: _Signs) -> dict[str, int]:
    return {
        "pupils": c.pupils,
        "pupils_with_linked_parent": c.pupils_with_linked_parent,
        "invitations_pending": c.invitations_pending,
        "invitations_bounced": c.invitations_bounced,
        "parents_linked": c.parents_linked,
        "parents_active_30d": signs.active,
        "parents_never_signed_in": signs.never,
    }


async def uptake(
    identity_client: IdentityClient,
    staff: StaffLinking,
    *,
    school_id: str | None,
    class_id: str | None,
    page_size: int | None = None,
) -> dict[str, Any]:
    """`{scope, <counts>, rows: [{school_id|class_id, name, <counts>}]}`.

    Linking names the linked parents a page at a time; each page's ids go to identity while the
    next page is read, and only the counts are kept.
    """
    size = page_size or PAGE
    since = utcnow() - timedelta(days=ACTIVE_DAYS)
    reply = await staff.uptake(school_id=school_id, class_id=class_id, parents_limit=size)
    total = _Signs()
    signs = {r.id: _Signs() for r in reply.rows}
    ids, rows, after = reply.parent_ids, {r.id: r.parents for r in reply.rows}, reply.parents_after
    while True:
        following = (
            asyncio.ensure_future(staff.uptake_parents(school_id=school_id, class_id=class_id, after=after, limit=size))
            if after is not None
            else None
        )
        try:
            states = await identity_client.parent_activity(ids, since)
        except BaseException:
            if following is not None:
                following.cancel()
            raise
        total.add(states)
        for key, positions in rows.items():
            if key in signs:
                signs[key].add(states, positions)
        if following is None:
            break
        page = await following
        ids, rows, after = page.parent_ids, {r.id: r.parents for r in page.rows}, page.parents_after
    key = "school_id" if reply.scope == "trust" else "class_id"
    return {
        "scope": reply.scope,
        **_counts(reply, total),
        "rows": [{key: r.id, "name": r.name, **_counts(r, signs[r.id])} for r in reply.rows],
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
