"""What identity keeps, and for how long.

A session goes `PORTAL_RETENTION_SESSION_DAYS` after it ended (expired, idle, logged out), a
verification or reset token (a hash) as long after it was used or expired; the counters of the
guessing limits (hashes of addresses) once no window counts them any more.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, or_, select
from sqlmodel import col

from contracts.kit.outbox import UnitOfWork
from contracts.kit.retention import days, rowcount
from identity.tables import LoginFailure, RateEvent, Session, Token

if TYPE_CHECKING:
    from identity.app import Settings

HOUR = timedelta(hours=1)


def session_end(session: Session) -> datetime:
    """When a session stopped working (or will): idle, absolute expiry or logout, the earliest."""
    end = min(session.absolute_expires_at, session.last_seen_at + timedelta(seconds=session.idle_seconds))
    return min(end, session.revoked_at) if session.revoked_at is not None else end


class IdentityRetention:
    """identity's purge."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def purge(self, uow: UnitOfWork, now: datetime) -> dict[str, int]:
        """Erase sessions and tokens that ended longer ago than the session retention, and
        guessing counters no window counts."""
        s = uow.session
        cutoff = now - days(self.settings.retention_session_days)
        # Every session that ended before the cutoff was last seen, expired or revoked before it.
        candidates = (
            await s.execute(
                select(Session).where(
                    or_(
                        col(Session.last_seen_at) < cutoff,
                        col(Session.absolute_expires_at) < cutoff,
                        col(Session.revoked_at) < cutoff,
                    )
                )
            )
        ).scalars()
        ended = [row.id for row in candidates if session_end(row) < cutoff]
        for start in range(0, len(ended), 500):
            await s.execute(delete(Session).where(col(Session.id).in_(ended[start : start + 500])))
        tokens = await s.execute(delete(Token).where(or_(col(Token.used_at) < cutoff, col(Token.expires_at) < cutoff)))
        # The same bounds as IdentityService.prune: older than every window that counts them.
        login_window = max(HOUR, timedelta(minutes=self.settings.identity_account_failure_window_minutes))
        failures = await s.execute(delete(LoginFailure).where(col(LoginFailure.at) < now - login_window - HOUR))
        rates = await s.execute(delete(RateEvent).where(col(RateEvent.at) < now - 2 * HOUR))
        return {
            "sessions": len(ended),
            "tokens": rowcount(tokens),
            "login_failures": rowcount(failures),
            "rate_events": rowcount(rates),
        }
