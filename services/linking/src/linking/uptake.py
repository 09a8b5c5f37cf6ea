"""Uptake figures for staff: how many pupils have a linked parent, invitations waiting or
bounced, which parents are linked, for a trust's schools, a school's classes or one class.

The database counts (a few aggregate queries over the scope, whatever its size); only the
linked parents' ids are read out, a page at a time (a trust's can be more than a NATS message
holds), each page read by itself.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy import join as sa_join
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import linking as contract
from linking.context import LinkingContext
from linking.scope import class_in_scope, school_ids, school_in_scope
from linking.tables import LINKED, ClassMember, Invitation, Link, Pupil, School, SchoolClass

_FIGURES = ("pupils", "pupils_with_linked_parent", "invitations_pending", "invitations_bounced", "parents_linked")


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
            if scope == "trust":
                classes = select(col(School.school_id), col(School.name)).where(col(School.school_id).in_(schools))
            else:
                classes = select(col(SchoolClass.class_id), col(SchoolClass.name)).where(
                    col(SchoolClass.school_id).in_(schools)
                )
                if class_id is not None:
                    classes = classes.where(col(SchoolClass.class_id) == class_id)
            names: dict[str, str] = dict((await s.execute(classes)).tuples().all())
            page = await _parents_page(s, scope, schools, class_id, None, req.parents_limit)
            rows = (
                {k: v for k, v in (await _figures(s, scope, schools, class_id, names, now, by_row=True)).items() if k}
                if scope != "class"
                else {}
            )
            if scope == "trust":
                # A pupil is at one school: the trust's figures are its schools' added up (but for
                # the parents, who may have children at two).
                total = {f: sum(r[f] for r in rows.values()) for f in _FIGURES}
            else:
                total = (await _figures(s, scope, schools, class_id, names, now, by_row=False)).get(
                    None, dict.fromkeys(_FIGURES, 0)
                )
            # Parents counted from their ids when the page holds them all (it usually does).
            if page.after is None:
                total["parents_linked"] = len(page.ids)
                for k, r in rows.items():
                    r["parents_linked"] = len(page.positions(k))
            else:
                total["parents_linked"] = (await _parents_linked(s, scope, schools, class_id, by_row=False))[None]
                each = await _parents_linked(s, scope, schools, class_id, by_row=True)
                for k, r in rows.items():
                    r["parents_linked"] = each.get(k, 0)

        out_rows = [
            contract.UptakeRow(id=k, name=names[k], parents=page.positions(k), **rows.get(k, {}))
            for k in sorted(names, key=lambda k: (names[k].lower(), k))
            if scope != "class"
        ]
        return contract.UptakeReply(scope=scope, parent_ids=page.ids, rows=out_rows, parents_after=page.after, **total)

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
    rows: dict[str, list[int]]  # row key -> the positions in `ids` of its parents, in order
    after: str | None  # the next page's cursor

    def positions(self, key: str) -> list[int]:
        return self.rows.get(key, [])


async def _parents_page(
    s: AsyncSession, scope: str, schools: list[str], class_id: str | None, after: str | None, limit: int
) -> _Page:
    """Up to `limit` of the scope's linked parents after `after`, in the database's order of their
    ids (the order its comparisons follow, so the cursor pages without gap or repeat), and which
    rows (schools of a trust, classes of a school) each is in.

    One query: each parent with each of its rows, numbered by parent, so that the database
    stops at the page's end and the page is read once, in order (a first page that holds the
    whole scope comes in any order)."""
    pairs, _ = _pairs(scope, schools, class_id)
    if after is None:
        # The first page, when the scope's pairs are no more than a page's parents: all of
        # them, in whatever order the database finds them (there is no next page), spares it
        # the sorting and numbering.
        unordered = (await (await s.connection()).execute(pairs.limit(limit + 1))).all()
        if len(unordered) <= limit:
            at: dict[str, list[str]] = {}
            for parent, k in unordered:
                row_keys = at.setdefault(parent, [])
                if k is not None and k not in row_keys:
                    row_keys.append(k)
            whole = _paged(list(at), list(at.values()), limit, more=False, rows=scope != "class")
            if whole.after is None:
                return whole
    else:
        pairs = pairs.where(col(Link.parent_id) > after)
    # A parent of two pupils in a row is in it once: kept here, as PostgreSQL would sort once
    # more for a DISTINCT.
    numbered = pairs.add_columns(func.dense_rank().over(order_by=col(Link.parent_id)).label("n")).subquery()
    found = await (await s.connection()).execute(
        select(numbered.c.parent_id, numbered.c.row).where(numbered.c.n <= limit + 1).order_by(numbered.c.parent_id)
    )
    ids: list[str] = []
    keys: list[list[str]] = []
    for parent, k in found:
        if not ids or ids[-1] != parent:
            ids.append(parent)
            keys.append([])
        # A pupil in no class: their parents count for the school, in none of its rows.
        if k is not None and k not in keys[-1]:
            keys[-1].append(k)
    return _paged(ids, keys, limit, more=len(ids) > limit, rows=scope != "class")


def _paged(ids: list[str], keys: list[list[str]], limit: int, *, more: bool, rows: bool) -> _Page:
    """The page of the first `limit` of `ids` (each with its rows' keys), and fewer when they
    would not fit a message; with the positions of each row's parents unless a class's (one
    row, the scope itself)."""
    # As many as the message can carry: each id in quotes, and its position in each of its rows.
    size = 0
    for n in range(min(len(ids), limit)):
        size += len(ids[n]) + 3 + 7 * len(keys[n])
        if size > PAGE_BYTES:
            limit, more = n, True
            break
    ids = ids[:limit]
    positions: dict[str, list[int]] = defaultdict(list)
    for n in range(len(ids) if rows else 0):
        for k in keys[n]:
            positions[k].append(n)
    return _Page(ids=ids, rows=positions, after=ids[-1] if more else None)


def _pairs(scope: str, schools: list[str], class_id: str | None) -> tuple[Any, Any]:
    """The scope's linked parents, each with a row it is in (labelled `row`: a school of a
    trust, a class of a school, the class; null for a school's pupil in no class), and that
    row's column."""
    if scope == "trust":
        key: Any = col(Link.school_id)
        pairs = select(col(Link.parent_id), key.label("row"))
    else:
        key = col(ClassMember.class_id)
        pairs = select(col(Link.parent_id), key.label("row"))
        if scope == "class":
            pairs = pairs.join(
                ClassMember,
                and_(col(ClassMember.pupil_id) == col(Link.pupil_id), col(ClassMember.class_id) == class_id),
            )
        else:
            # The pupil's classes of the school: found from the pupil (class members by pupil,
            # each class by its id), not by trying each class of the school for each pupil.
            of_school = sa_join(
                ClassMember,
                SchoolClass,
                and_(col(SchoolClass.class_id) == key, col(SchoolClass.school_id).in_(schools)),
            )
            pairs = pairs.outerjoin(of_school, col(ClassMember.pupil_id) == col(Link.pupil_id))
    return pairs.join(Pupil, _pupil_of_link()).where(_current(schools), _linked()), key


async def _parents_linked(
    s: AsyncSession, scope: str, schools: list[str], class_id: str | None, *, by_row: bool
) -> dict[str | None, int]:
    """How many parents are linked to the scope's pupils (under the key None), or to each row's:
    for a scope with more parents than a page holds."""
    pairs, _ = _pairs(scope, schools, class_id)
    if by_row:
        each = pairs.distinct().subquery()
        counted = select(each.c.row, func.count()).where(each.c.row.is_not(None)).group_by(each.c.row)
        return dict((await s.execute(counted)).tuples().all())
    parents = pairs.with_only_columns(col(Link.parent_id)).distinct().subquery()
    return {None: int((await s.execute(select(func.count()).select_from(parents))).scalar_one())}


async def _figures(
    s: AsyncSession,
    scope: str,
    schools: list[str],
    class_id: str | None,
    names: dict[str, str],
    now: datetime,
    *,
    by_row: bool,
) -> dict[str | None, dict[str, int]]:
    """Pupils, pupils with a linked parent, pending and bounced invitations of the scope (under
    the key None) or of each of its rows (schools of a trust, classes of a school), counted by
    the database in three aggregate queries whatever the scope's size (reading its pupils,
    links and invitations into Python took most of the uptake's time). A pupil in two classes
    counts in both."""
    # Each current pupil of the scope, with the row it counts in.
    if scope == "trust":
        key: Any = col(Pupil.school_id)
        joined: Any = None
    else:
        key = col(ClassMember.class_id)
        rows_of = [class_id] if scope == "class" else list(names)
        joined = and_(col(ClassMember.pupil_id) == col(Pupil.pupil_id), col(ClassMember.class_id).in_(rows_of))
        if not by_row and scope == "school":
            # Pupils in no class still count for the school.
            joined = None
    grouped = [key] if by_row else []

    def of_pupils(q: Any, *, group: bool = True) -> Any:
        if joined is not None:
            q = q.join(ClassMember, joined)
        q = q.where(_current(schools))
        return q.group_by(*grouped) if grouped and group else q

    out: dict[str | None, dict[str, int]] = {}

    def put(k: str | None, **figures: int | None) -> None:
        if k is None or k in names:
            out.setdefault(k, dict.fromkeys(_FIGURES, 0)).update({f: int(v or 0) for f, v in figures.items()})

    for row in await s.execute(of_pupils(select(*grouped, func.count()).select_from(Pupil))):
        put(row[0] if by_row else None, pupils=row[-1])
    # Each (row, pupil) with a linked parent once, counted: a DISTINCT of its own, which
    # PostgreSQL hashes, where a count(DISTINCT) sorts each group.
    linked = (
        of_pupils(
            select(*(k.label("row") for k in grouped), col(Link.pupil_id))
            .select_from(Pupil)
            .join(Link, and_(_pupil_of_link(), _linked())),
            group=False,
        )
        .distinct()
        .subquery()
    )
    by = [linked.c.row] if by_row else []
    for row in await s.execute(select(*by, func.count()).select_from(linked).group_by(*by)):
        put(row[0] if by_row else None, pupils_with_linked_parent=row[-1])
    pending = and_(col(Invitation.status) == "invited", col(Invitation.expires_at) > now)
    invitations = of_pupils(
        select(
            *grouped,
            func.sum(case((pending, 1), else_=0)),
            func.sum(case((col(Invitation.status) == "bounced", 1), else_=0)),
        )
        .select_from(Invitation)
        .join(
            Pupil,
            and_(
                col(Pupil.pupil_id) == col(Invitation.pupil_id),
                col(Pupil.school_id) == col(Invitation.school_id),
            ),
        )
        .where(col(Invitation.status).in_(["invited", "bounced"]))
    )
    for row in await s.execute(invitations):
        put(row[0] if by_row else None, invitations_pending=row[-2], invitations_bounced=row[-1])
    return out
