"""What overview keeps about a pupil who left, and for how long: their homework, messages and
stars go `PORTAL_RETENTION_LEAVER_DAYS` after they left. The pupil's id and when they left stay,
so that an older roster event arriving late cannot bring them back."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlmodel import col

from contracts.kit.outbox import UnitOfWork
from contracts.kit.retention import days, rowcount
from overview.tables import HomeworkPupil, Pupil, PupilMessage, StarAward

if TYPE_CHECKING:
    from overview.app import Settings


class OverviewRetention:
    """overview's purge."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def purge(self, uow: UnitOfWork, now: datetime) -> dict[str, int]:
        """Erase the projections of pupils who left longer ago than the leaver retention."""
        s = uow.session
        cutoff = now - days(self.settings.retention_leaver_days)
        leavers = list((await s.execute(select(col(Pupil.pupil_id)).where(col(Pupil.left_at) < cutoff))).scalars())
        erased = {"homework": 0, "messages": 0, "stars": 0}
        for start in range(0, len(leavers), 500):
            ids = leavers[start : start + 500]
            homework = await s.execute(delete(HomeworkPupil).where(col(HomeworkPupil.pupil_id).in_(ids)))
            messages = await s.execute(delete(PupilMessage).where(col(PupilMessage.pupil_id).in_(ids)))
            stars = await s.execute(delete(StarAward).where(col(StarAward.pupil_id).in_(ids)))
            erased["homework"] += rowcount(homework)
            erased["messages"] += rowcount(messages)
            erased["stars"] += rowcount(stars)
        return erased
