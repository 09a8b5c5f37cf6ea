"""Whether parents sign in, for the staff's uptake figures: ids in, ids out, never names."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlmodel import col

from contracts import identity as c
from contracts.kit.runtime import ServiceRuntime
from identity.tables import Account, Session


class ParentActivity:
    """Answers `rpc.identity.parent_activity.v1` from the accounts' last sign-in and the
    sessions' last use."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def activity(self, req: c.ParentActivityRequest) -> c.ParentActivityReply:
        """Which accounts ever signed in, and which signed in or used a session since `req.since`.

        "Signed in" is the account's own record: a parent who signed in 40 days ago and whose
        sessions have since been erased still has. "Active" is the later of the last sign-in and
        the last use of a session still on record (a session in use is seen every request).
        """
        ids = sorted(set(req.ids))
        signed_in: list[str] = []
        active: list[str] = []
        async with self.runtime.db.reader() as s:
            for start in range(0, len(ids), 500):
                rows = await s.execute(
                    select(col(Account.id), col(Account.last_signed_in_at), func.max(col(Session.last_seen_at)))
                    .outerjoin(Session, col(Session.account_id) == col(Account.id))
                    .where(col(Account.id).in_(ids[start : start + 500]))
                    .group_by(col(Account.id), col(Account.last_signed_in_at))
                )
                for account_id, last_signed_in, last_seen in rows:
                    seen = [t for t in (last_signed_in, last_seen) if t is not None]
                    if seen:
                        signed_in.append(account_id)
                        if max(seen) >= req.since:
                            active.append(account_id)
        return c.ParentActivityReply(signed_in=signed_in, active=active)
