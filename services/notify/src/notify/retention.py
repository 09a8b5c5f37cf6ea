"""What notify keeps, and for how long.

An email's content and request (its working link, code or token) are erased when it is
delivered or given up (`Sender._finish`); its record (kind, status, times, recipient) goes
`PORTAL_RETENTION_EMAIL_DAYS` after that.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlmodel import col

from contracts.kit.outbox import UnitOfWork
from contracts.kit.retention import days, rowcount
from notify.tables import FAILED, SENT, Email

if TYPE_CHECKING:
    from notify.app import Settings


class NotifyRetention:
    """notify's purge."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def purge(self, uow: UnitOfWork, now: datetime) -> dict[str, int]:
        """Erase the records of emails finished longer ago than the email retention."""
        cutoff = now - days(self.settings.retention_email_days)
        result = await uow.session.execute(
            delete(Email).where(col(Email.status).in_([SENT, FAILED]), col(Email.finished_at) < cutoff)
        )
        return {"emails": rowcount(result)}
