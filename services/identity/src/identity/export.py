"""An account's own data, for its export (`GET /me/export`): what identity holds about it.

Its details and the record of each of its sessions. Never the password hash, a token's hash,
or the counters of failed sign-ins (those hold hashes of addresses, not the account's data).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from contracts import identity as c
from contracts.kit.rpc import RpcFailure
from contracts.kit.runtime import ServiceRuntime
from identity.preferences import preferences_of
from identity.tables import Account, Session


class AccountExports:
    """Answers `rpc.identity.export.v1`."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def export(self, req: c.ExportRequest) -> c.AccountExport:
        """The account's details and every session identity still has a record of, oldest first."""
        async with self.runtime.db.reader() as s:
            account = await s.get(Account, req.account_id)
            if account is None:
                # Deleted since the gateway resolved the session: there is no one to export.
                raise RpcFailure(c.E_INVALID_SESSION, "No such account.")
            sessions = (
                await s.execute(
                    select(col(Session.created_at), col(Session.last_seen_at))
                    .where(col(Session.account_id) == account.id)
                    .order_by(col(Session.created_at), col(Session.id))
                )
            ).all()
        return c.AccountExport(
            id=account.id,
            email=account.email,
            name=account.name,
            role=account.role,
            created_at=account.created_at,
            verified_at=account.verified_at,
            sessions=[c.ExportedSession(created_at=row[0], last_seen_at=row[1]) for row in sessions],
            **preferences_of(account).model_dump(),
        )
