"""Uptake figures for staff: how many pupils have a linked parent, invitations waiting or
bounced, which parents are linked, for a trust's schools, a school's classes or one class.

A handful of queries over the whole scope, counted here: a 20-school trust is a few tens of
thousands of rows, read once.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import and_, select
from sqlmodel import col

from contracts import linking as contract
from linking.context import LinkingContext
from linking.scope import class_in_scope, school_ids, school_in_scope
from linking.tables import LINKED, ClassMember, Invitation, Link, Pupil, School, SchoolClass


class _Tally:
    def __init__(self) -> None:
        self.pupils: set[str] = set()
        self.linked_pupils: set[str] = set()
        self.parents: set[str] = set()
        self.pending = 0
        self.bounced = 0

    def counts(self) -> dict[str, object]:
        return {
            "pupils": len(self.pupils),
            "pupils_with_linked_parent": len(self.linked_pupils),
            "invitations_pending": self.pending,
            "invitations_bounced": self.bounced,
            "parents_linked": len(self.parents),
        }


class Uptake:
    """Answers `rpc.linking.uptake.v1`."""

    def __init__(self, ctx: LinkingContext) -> None:
        self.ctx = ctx

    async def uptake(self, req: contract.UptakeRequest) -> contract.UptakeReply:
        """The figures of the scope asked for (default: the caller's), with its rows."""
        now = self.ctx.now()
        async with self.ctx.db.reader() as s:
            class_id: str | None = None
            if req.class_id is not None:
                cls, _ = await class_in_scope(s, req.scope, req.class_id)
                scope, schools, class_id = "class", [cls.school_id], cls.class_id
            elif req.school_id is not None:
                scope, schools = "school", [await school_in_scope(s, req.scope, req.school_id)]
            else:
                schools = sorted(await school_ids(s, req.scope))
                scope = "trust" if req.scope.trust_ids or len(schools) > 1 else "school"

            # Each pupil's row keys: their school (trust scope) or their classes (school scope).
            keys: dict[str, list[str]] = defaultdict(list)
            names: dict[str, str] = {}
            current = and_(col(Pupil.school_id).in_(schools), col(Pupil.left_at).is_(None))
            if scope == "trust":
                for sid, name in await s.execute(
                    select(col(School.school_id), col(School.name)).where(col(School.school_id).in_(schools))
                ):
                    names[sid] = name
                for pid, sid in await s.execute(select(col(Pupil.pupil_id), col(Pupil.school_id)).where(current)):
                    keys[pid].append(sid)
            else:
                classes = select(col(SchoolClass.class_id), col(SchoolClass.name)).where(
                    col(SchoolClass.school_id).in_(schools)
                )
                if class_id is not None:
                    classes = classes.where(col(SchoolClass.class_id) == class_id)
                for cid, name in await s.execute(classes):
                    names[cid] = name
                members = (
                    select(col(ClassMember.pupil_id), col(ClassMember.class_id))
                    .join(Pupil, col(Pupil.pupil_id) == col(ClassMember.pupil_id))
                    .where(current, col(ClassMember.class_id).in_(list(names)))
                )
                for pid, cid in await s.execute(members):
                    keys[pid].append(cid)
                if scope == "school":
                    # Pupils in no class still count for the school.
                    for (pid,) in await s.execute(select(col(Pupil.pupil_id)).where(current)):
                        keys.setdefault(pid, [])

            links = await s.execute(
                select(col(Link.pupil_id), col(Link.parent_id))
                .join(
                    Pupil, and_(col(Pupil.pupil_id) == col(Link.pupil_id), col(Pupil.school_id) == col(Link.school_id))
                )
                .where(current, col(Link.status) == LINKED, col(Link.removed_at).is_(None))
            )
            link_rows = [(pid, parent) for pid, parent in links if pid in keys]
            invitations = await s.execute(
                select(col(Invitation.pupil_id), col(Invitation.status), col(Invitation.expires_at))
                .join(
                    Pupil,
                    and_(
                        col(Pupil.pupil_id) == col(Invitation.pupil_id),
                        col(Pupil.school_id) == col(Invitation.school_id),
                    ),
                )
                .where(current, col(Invitation.status).in_(["invited", "bounced"]))
            )
            invitation_rows = [(pid, st, exp) for pid, st, exp in invitations if pid in keys]

        total, rows = _count(keys, names, link_rows, invitation_rows, now)
        parent_ids = sorted(total.parents)
        position = {p: i for i, p in enumerate(parent_ids)}
        out_rows = (
            []
            if scope == "class"
            else [
                contract.UptakeRow(
                    id=k, name=names[k], parents=sorted(position[p] for p in rows[k].parents), **rows[k].counts()
                )
                for k in sorted(names, key=lambda k: (names[k].lower(), k))
            ]
        )
        return contract.UptakeReply(scope=scope, parent_ids=parent_ids, rows=out_rows, **total.counts())


def _count(
    keys: dict[str, list[str]],
    names: dict[str, str],
    link_rows: list[tuple[str, str]],
    invitation_rows: list[tuple[str, str, datetime]],
    now: datetime,
) -> tuple[_Tally, dict[str, _Tally]]:
    """The scope's tally and each row's."""
    total = _Tally()
    rows: dict[str, _Tally] = {k: _Tally() for k in names}
    for pid, row_keys in keys.items():
        total.pupils.add(pid)
        for k in row_keys:
            rows[k].pupils.add(pid)
    for pid, parent in link_rows:
        for t in (total, *(rows[k] for k in keys[pid])):
            t.linked_pupils.add(pid)
            t.parents.add(parent)
    for pid, status, expires_at in invitation_rows:
        pending = status == "invited" and expires_at > now
        bounced = status == "bounced"
        for t in (total, *(rows[k] for k in keys[pid])):
            t.pending += pending
            t.bounced += bounced
    return total, rows
