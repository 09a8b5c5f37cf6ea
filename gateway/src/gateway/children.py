"""One child in detail, for the parent's API routes and pages alike: homework, unread messages
and a week's stars, read from overview through the detail cache, for a child the parent may
see right now (linking's answer, remembered); anyone else's child is "not found"."""

from __future__ import annotations

import json
import re
from datetime import date

from litestar.datastructures import State

from contracts import overview
from gateway.caches.detail import get_detail_cache, next_due
from gateway.caches.links import get_links_cache
from gateway.clients import get_clients
from gateway.errors import ApiError, not_found

_WEEK = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_week(value: str | None) -> date | None:
    """`?week=YYYY-MM-DD` (any day of the week): 422 unless it is a real date."""
    if value is None or value == "":
        return None
    try:
        if not _WEEK.fullmatch(value):
            raise ValueError(value)
        day = date.fromisoformat(value)
        # Weeks whose instants exist in every timezone (overview refuses others).
        if not date(1900, 1, 1) <= day <= date(9000, 12, 31):
            raise ValueError(value)
        return day
    except ValueError:
        raise ApiError(
            422,
            "validation_error",
            "week must be a date, YYYY-MM-DD.",
            extra={"errors": [{"field": "week", "message": "must be a date, YYYY-MM-DD"}]},
        ) from None


async def check_child(state: State, parent_id: str, pupil_id: str) -> None:
    """404 unless the pupil is this parent's child now."""
    if pupil_id not in await get_links_cache(state).active(parent_id):
        raise not_found("No such child.")


def _items(data: bytes) -> bytes:
    """Overview's `{"items": [...]}` as the bare array the API answers."""
    return json.dumps(json.loads(data)["items"], ensure_ascii=False, separators=(",", ":")).encode()


async def homework(state: State, parent_id: str, pupil_id: str) -> bytes:
    """The child's homework as a JSON array."""
    await check_child(state, parent_id, pupil_id)
    ov = get_clients(state).overview

    async def fetch() -> bytes:
        return _items(await ov.detail_raw(overview.HOMEWORK, overview.ChildRequest(pupil_id=pupil_id)))

    return await get_detail_cache(state).get(("homework", pupil_id, ""), fetch, next_due)


async def messages(state: State, parent_id: str, pupil_id: str) -> bytes:
    """The child's unread messages as a JSON array."""
    await check_child(state, parent_id, pupil_id)
    ov = get_clients(state).overview

    async def fetch() -> bytes:
        return _items(await ov.detail_raw(overview.MESSAGES, overview.ChildRequest(pupil_id=pupil_id)))

    return await get_detail_cache(state).get(("messages", pupil_id, ""), fetch, lambda _: None)


async def stars(state: State, parent_id: str, pupil_id: str, week: date | None) -> bytes:
    """A week's stars of the child, `{week_start, total, awards}`."""
    await check_child(state, parent_id, pupil_id)
    ov = get_clients(state).overview

    async def fetch() -> bytes:
        return await ov.detail_raw(overview.STARS, overview.StarsRequest(pupil_id=pupil_id, week=week))

    more = week.isoformat() if week else ""
    return await get_detail_cache(state).get(("stars", pupil_id, more), fetch, lambda _: None)


async def target(state: State, pupil_id: str) -> overview.HandoffTarget:
    """Where the pupil's school sends each area (the caller has checked the child is theirs)."""
    ov = get_clients(state).overview

    async def fetch() -> bytes:
        return await ov.detail_raw(overview.TARGET, overview.ChildRequest(pupil_id=pupil_id))

    data = await get_detail_cache(state).get(("target", pupil_id, ""), fetch, lambda _: None)
    return overview.HandoffTarget.model_validate_json(data)
