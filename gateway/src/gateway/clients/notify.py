"""Notify as the gateway asks it (`contracts.notify`): a person's emails for their export."""

from __future__ import annotations

from contracts import notify
from gateway.clients.transport import Transport


class NotifyClient:
    """The ledger of emails sent."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def export(self, parent_id: str, email: str) -> list[notify.ExportedEmail]:
        """The emails to this account or this address, oldest first (kind, when, what became of it)."""
        reply = await self._t.call(notify.EXPORT, notify.EmailsExportRequest(parent_id=parent_id, email=email))
        return reply.emails
