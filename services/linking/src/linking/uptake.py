"""Uptake figures for staff: how many pupils have a linked parent, invitations waiting or
bounced, which parents are linked, for a trust's schools, a school's classes or one class.

A handful of queries over the whole scope, counted here: a 20-school trust is a few tens of
thousands of rows, read once. Its linked parents' ids go out a page at a time (a trust's can
be more than a NATS message holds), each page read by itself.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.ext.asyncio import AsyncSession
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
        """The figures of the scope asked for (default: the caller's), with its rows and the first
        page of its linked parents."""
        now = self.ctx.now()
        async with self.ctx.db.reader() as s:
            scope, schools, class_id = await _resolve(s, req.scope, req.school_id, req.class_id)

            # Each pupil's row keys: their school (trust scope) or their classes (school scope).
            keys: dict[str, list[str]] = defaultdict(list)
            names: dict[str, str] = {}
            current = _current(schools)
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
                select(col(Link.pupil_id), col(Link.parent_id)).join(Pupil, _pupil_of_link()).where(current, _linked())
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
            # Every parent in this one reply when they fit (in any order: there is no next page);
            # otherwise pages in the database's order, which its cursor follows.
            page = _Page(ids=sorted(total.parents), rows={k: rows[k].parents for k in names}, after=None)
            if len(page.ids) > req.parents_limit or page.size() > PAGE_BYTES:
                page = await _parents_page(s, scope, schools, class_id, None, req.parents_limit)

        out_rows = (
            []
            if scope == "class"
            else [
                contract.UptakeRow(id=k, name=names[k], parents=page.positions(k), **rows[k].counts())
                for k in sorted(names, key=lambda k: (names[k].lower(), k))
            ]
        )
        return contract.UptakeReply(
            scope=scope, parent_ids=page.ids, rows=out_rows, parents_after=page.after, **total.counts()
        )

    async def parents(self, req: contract.UptakeParentsRequest) -> contract.UptakeParentsReply:
        """The page of the scope's linked parents after `req.after`, with the rows each is in."""
        async with self.ctx.db.reader() as s:
            scope, schools, class_id = await _resolve(s, req.scope, req.school_id, req.class_id)
            page = await _parents_page(s, scope, schools, class_id, req.after, req.limit)
        return contract.UptakeParentsReply(
            parent_ids=page.ids,
            rows=[contract.UptakeParentsRow(id=k, parents=page.positions(k)) for k in sorted(page.rows)],
            parents_after=page.after,
        )


async def _resolve(
    s: AsyncSession, who: contract.StaffScope, school_id: str | None, class_id: str | None
) -> tuple[str, list[str], str | None]:
    """The scope asked for (trust, school or class), its schools and its class; not_found outside."""
    if class_id is not None:
        cls, _ = await class_in_scope(s, who, class_id)
        return "class", [cls.school_id], cls.class_id
    if school_id is not None:
        return "school", [await school_in_scope(s, who, school_id)], None
    schools = sorted(await school_ids(s, who))
    return ("trust" if who.trust_ids or len(schools) > 1 else "school"), schools, None


def _current(schools: list[str]) -> ColumnElement[bool]:
    return and_(col(Pupil.school_id).in_(schools), col(Pupil.left_at).is_(None))


def _pupil_of_link() -> ColumnElement[bool]:
    return and_(col(Pupil.pupil_id) == col(Link.pupil_id), col(Pupil.school_id) == col(Link.school_id))


def _linked() -> ColumnElement[bool]:
    return and_(col(Link.status) == LINKED, col(Link.removed_at).is_(None))


# What a page of parents may take of a reply (NATS carries at most 1 MB, the counts and names
# of the rows take the rest): about 20,000 ids of 32 characters in a trust's uptake.
PAGE_BYTES = 750_000


@dataclass
class _Page:
    ids: list[str]
    rows: dict[str, set[str]]  # row key -> its parents in the page
    after: str | None  # the next page's cursor

    def __post_init__(self) -> None:
        self._at = {p: i for i, p in enumerate(self.ids)}

    def size(self) -> int:
        """About what the page takes of a message: each id in quotes, its position in each row."""
        return sum(len(p) + 3 for p in self.ids) + 7 * sum(len(v) for v in self.rows.values())

    def positions(self, key: str) -> list[int]:
        return sorted(self._at[p] for p in self.rows.get(key, ()))


async def _parents_page(
    s: AsyncSession, scope: str, schools: list[str], class_id: str | None, after: str | None, limit: int
) -> _Page:
    """Up to `limit` of the scope's linked parents after `after`, in the database's order of their
    ids (the order its comparisons follow, so the cursor pages without gap or repeat), and which
    rows (schools of a trust, classes of a school) each is in."""
    linked = select(col(Link.parent_id)).join(Pupil, _pupil_of_link()).where(_current(schools), _linked())
    if scope == "class":
        linked = linked.join(
            ClassMember,
            and_(col(ClassMember.pupil_id) == col(Link.pupil_id), col(ClassMember.class_id) == class_id),
        )
    if after is not None:
        linked = linked.where(col(Link.parent_id) > after)
    ids = list((await s.execute(linked.distinct().order_by(col(Link.parent_id)).limit(limit + 1))).scalars())
    more = len(ids) > limit
    ids = ids[:limit]
    rows: dict[str, set[str]] = defaultdict(set)
    keys: dict[str, list[str]] = defaultdict(list)
    if ids and scope != "class":
        if scope == "trust":
            pairs = select(col(Link.parent_id), col(Link.school_id))
        else:
            pairs = (
                select(col(Link.parent_id), col(ClassMember.class_id))
                .join(ClassMember, col(ClassMember.pupil_id) == col(Link.pupil_id))
                .where(
                    col(ClassMember.class_id).in_(
                        select(col(SchoolClass.class_id)).where(col(SchoolClass.school_id).in_(schools))
                    )
                )
            )
        pairs = pairs.join(Pupil, _pupil_of_link()).where(_current(schools), _linked(), col(Link.parent_id) <= ids[-1])
        if after is not None:
            pairs = pairs.where(col(Link.parent_id) > after)
        for parent, key in await s.execute(pairs):
            keys[parent].append(key)
    # As many as the message can carry: each id in quotes, and its position in each of its rows.
    size = 0
    for n, parent in enumerate(ids):
        size += len(parent) + 3 + 7 * len(keys[parent])
        if size > PAGE_BYTES:
            ids, more = ids[:n], True
            break
    for parent in ids:
        for key in keys[parent]:
            rows[key].add(parent)
    return _Page(ids=ids, rows=rows, after=ids[-1] if more else None)


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
