"""Whether parents sign in, for the staff's uptake figures: ids in, one character per id out,
never names."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, String, case, cast, exists, func, literal, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import identity as c
from contracts.kit.db import dialect_name
from contracts.kit.runtime import ServiceRuntime
from identity.tables import Account, Session


# Each account's state is decided by the database (the timestamps never reach Python, where
# parsing two of them a row was most of the time) and comes back by its position in the
# request. "Signed in" is the account's own record or any session on record (a session in use
# is seen every request); "active" is either since `since`.
def _state(since: datetime) -> ColumnElement[str]:
    last_signed_in = col(Account.last_signed_in_at)
    of_account = col(Session.account_id) == col(Account.id)
    return case(
        (
            or_(last_signed_in >= since, exists().where(of_account, col(Session.last_seen_at) >= since)),
            literal(c.ACTIVE),
        ),
        (or_(last_signed_in.is_not(None), exists().where(of_account)), literal(c.SIGNED_IN)),
    )


async def states(s: AsyncSession, ids: list[str], since: datetime) -> str:
    """One of `c.ACTIVE`, `c.SIGNED_IN`, `c.NEVER_SIGNED_IN` per id, in their order."""
    # The ids go in as one value (an array on PostgreSQL, a JSON array on SQLite) rather than
    # as thousands of parameters: one statement for the whole request.
    if dialect_name(s) == "postgresql":
        # Thousands of rows make the plan's cost pass PostgreSQL's bar for compiling it (JIT):
        # 25-30 ms of compiling for a 40 ms query, each time.
        await s.execute(text("SET LOCAL jit = off"))
        asked: Any = func.unnest(cast(ids, ARRAY(String))).table_valued("value", with_ordinality="key").render_derived()
        position: Any = asked.c.key - 1
    else:
        asked = func.json_each(json.dumps(ids)).table_valued("key", "value")
        position = asked.c.key
    # The known accounts come back, each with its state (null: never); filtering them in SQL
    # would have SQLite decide each state twice.
    rows = await (await s.connection()).execute(
        select(position, _state(since)).select_from(asked).join(Account, col(Account.id) == asked.c.value)
    )
    out = bytearray(c.NEVER_SIGNED_IN.encode() * len(ids))
    for pos, state in rows:
        if state is not None:
            out[pos] = ord(state)
    return out.decode()


class ParentActivity:
    """Answers `rpc.identity.parent_activity.v2` from the accounts' last sign-in and the
    sessions' last use."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def activity(self, req: c.ParentActivityRequest) -> c.ParentActivityReply:
        """Each id's state: signed in or seen since `req.since`, signed in before only, or never.

        "Signed in" is the account's own record: a parent who signed in 40 days ago and whose
        sessions have since been erased still has.
        """
        if not req.ids:
            return c.ParentActivityReply(states="")
        async with self.runtime.db.reader() as s:
            return c.ParentActivityReply(states=await states(s, req.ids, req.since))
