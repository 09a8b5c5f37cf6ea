"""Whether parents sign in, for the staff's uptake figures: ids in, ids out, never names."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlmodel import col

from contracts import identity as c
from contracts.kit.runtime import ServiceRuntime
from identity.tables import Session


class ParentActivity:
    """Answers `rpc.identity.parent_activity.v1` from the sessions' last use."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def activity(self, req: c.ParentActivityRequest) -> c.ParentActivityReply:
        """Which accounts have a session on record, and which were seen since `req.since`."""
        ids = sorted(set(req.ids))
        signed_in: list[str] = []
        active: list[str] = []
        async with self.runtime.db.reader() as s:
            for start in range(0, len(ids), 500):
                rows = await s.execute(
                    select(col(Session.account_id), func.max(col(Session.last_seen_at)))
                    .where(col(Session.account_id).in_(ids[start : start + 500]))
                    .group_by(col(Session.account_id))
                )
                for account_id, last_seen in rows:
                    signed_in.append(account_id)
                    if last_seen is not None and last_seen >= req.since:
                        active.append(account_id)
        return c.ParentActivityReply(signed_in=signed_in, active=active)
