"""Linking's uptake figures on SQLite and PostgreSQL (the database counts them): what counts
and what does not, and pages of parents of any size giving the same figures as one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from linking_env import Env, uid
from sqlalchemy import insert

from contracts import linking as contract
from linking.tables import ClassMember, Invitation, Link, Pupil, School, SchoolClass, Trust


async def _seed(env: Env) -> dict[str, str]:
    """A trust of two schools. Ash: class a1 (p1, p2 and p4, who left), a2 (p2), p3 in no class.
    Birch: b1 (p5). Parents: x of p1 and p2, y of p3, z of p1 and p5, w of p4 (who left); v of p5
    waiting to be verified and u of p5 removed."""
    n = {k: uid(k) for k in ("trust", "ash", "birch", "a1", "a2", "b1", "p1", "p2", "p3", "p4", "p5")}
    n |= {k: uid(f"parent-{k}") for k in ("x", "y", "z", "w", "v", "u")}
    now = datetime.now(UTC)
    pupils = {"p1": "ash", "p2": "ash", "p3": "ash", "p4": "ash", "p5": "birch"}
    members = [("a1", "p1"), ("a1", "p2"), ("a2", "p2"), ("a1", "p4"), ("b1", "p5")]

    def link(parent: str, pupil: str, status: str = "linked", removed: bool = False) -> dict:
        return {
            "id": uid("l")[-12:] + uid("k")[-8:],
            "parent_id": n[parent],
            "pupil_id": n[pupil],
            "school_id": n[pupils[pupil]],
            "relationship": "mother",
            "status": status,
            "via": "printed",
            "code_id": "c",
            "live_key": None if removed else f"{n[parent]}:{n[pupil]}",
            "created_at": now,
            "activated_at": now,
            "removed_at": now if removed else None,
        }

    def invitation(pupil: str, status: str, expires_in: timedelta) -> dict:
        return {
            "id": uid("i")[-12:] + uid("k")[-8:],
            "pupil_id": n[pupil],
            "school_id": n[pupils[pupil]],
            "email": f"{uid('e')}@example.org",
            "email_key": f"{uid('e')}@example.org",
            "code_id": uid("c"),
            "status": status,
            "sent_at": now,
            "expires_at": now + expires_in,
        }

    async with env.runtime.linking.ctx.db.session() as s:
        await s.execute(insert(Trust), [{"trust_id": n["trust"], "name": "Trust", "version_at": now}])
        await s.execute(
            insert(School),
            [
                {
                    "school_id": n[k],
                    "trust_id": n["trust"],
                    "name": name,
                    "timezone": "Europe/London",
                    "version_at": now,
                }
                for k, name in (("ash", "Ash"), ("birch", "Birch"))
            ],
        )
        await s.execute(
            insert(SchoolClass),
            [
                {"class_id": n[c], "school_id": n[school], "name": c.upper(), "version_at": now}
                for c, school in (("a1", "ash"), ("a2", "ash"), ("b1", "birch"))
            ],
        )
        await s.execute(
            insert(Pupil),
            [
                {"pupil_id": n[p], "school_id": n[school], "version_at": now, "left_at": now if p == "p4" else None}
                for p, school in pupils.items()
            ],
        )
        await s.execute(insert(ClassMember), [{"class_id": n[c], "pupil_id": n[p]} for c, p in members])
        await s.execute(
            insert(Link),
            [
                link("x", "p1"),
                link("x", "p2"),
                link("y", "p3"),
                link("z", "p1"),
                link("z", "p5"),
                link("w", "p4"),
                link("v", "p5", status="awaiting_verification"),
                link("u", "p5", removed=True),
            ],
        )
        await s.execute(
            insert(Invitation),
            [
                invitation("p1", "invited", timedelta(days=3)),
                invitation("p2", "invited", timedelta(days=-1)),
                invitation("p4", "invited", timedelta(days=3)),
                invitation("p5", "bounced", timedelta(days=3)),
                invitation("p3", "accepted", timedelta(days=3)),
            ],
        )
    return n


def _figures(c: contract.UptakeCounts) -> tuple[int, ...]:
    return (c.pupils, c.pupils_with_linked_parent, c.invitations_pending, c.invitations_bounced, c.parents_linked)


async def _all_pages(env: Env, scope: contract.StaffScope, limit: int, **where: str) -> tuple[object, dict]:
    """The uptake asked with pages of `limit` parents: its reply and each row's parents' ids."""
    first = await env.ask(contract.UPTAKE, contract.UptakeRequest(scope=scope, parents_limit=limit, **where), None)
    parents: dict[str, list[str]] = {r.id: [first.parent_ids[i] for i in r.parents] for r in first.rows}
    ids, after = list(first.parent_ids), first.parents_after
    while after is not None:
        assert len(ids) % limit == 0, "a full page before the next"
        page = await env.ask(
            contract.UPTAKE_PARENTS, contract.UptakeParentsRequest(scope=scope, after=after, limit=limit, **where), None
        )
        for r in page.rows:
            parents[r.id] = parents.get(r.id, []) + [page.parent_ids[i] for i in r.parents]
        ids += page.parent_ids
        after = page.parents_after
    assert len(set(ids)) == len(ids), "no parent twice"
    if first.parents_after is not None:
        assert ids == sorted(ids), "pages follow the cursor"
    return first, {"ids": set(ids), **{k: set(v) for k, v in parents.items()}}


async def test_what_counts_in_the_uptake_and_pages_give_the_same(env: Env) -> None:
    n = await _seed(env)
    trust = contract.StaffScope(trust_ids=[n["trust"]])
    whole = await env.ask(contract.UPTAKE, contract.UptakeRequest(scope=trust), None)
    assert whole.scope == "trust" and whole.parents_after is None
    # Pupils, with a linked parent, pending, bounced, parents: p4 has left, v is not linked yet
    # and u was removed; p2's invitation has expired; z is counted once for the trust.
    assert _figures(whole) == (4, 4, 1, 1, 3)
    assert [(r.name, _figures(r)) for r in whole.rows] == [("Ash", (3, 3, 1, 0, 3)), ("Birch", (1, 1, 0, 1, 1))]
    assert sorted(whole.parent_ids) == sorted(n[p] for p in "xyz")

    school = await env.ask(contract.UPTAKE, contract.UptakeRequest(scope=trust, school_id=n["ash"]), None)
    assert school.scope == "school"
    # p3 is in no class: counted for the school, with y, in none of its rows.
    assert _figures(school) == (3, 3, 1, 0, 3)
    assert [(r.name, _figures(r)) for r in school.rows] == [("A1", (2, 2, 1, 0, 2)), ("A2", (1, 1, 0, 0, 1))]
    rows = {r.name: {school.parent_ids[i] for i in r.parents} for r in school.rows}
    assert rows == {"A1": {n["x"], n["z"]}, "A2": {n["x"]}}
    assert n["y"] in school.parent_ids

    one = await env.ask(contract.UPTAKE, contract.UptakeRequest(scope=trust, class_id=n["a1"]), None)
    assert one.scope == "class" and one.rows == []
    assert _figures(one) == (2, 2, 1, 0, 2) and set(one.parent_ids) == {n["x"], n["z"]}

    # Pages of one or two parents: the same figures, and each row's parents over the pages.
    for where in ({}, {"school_id": n["ash"]}, {"class_id": n["a1"]}):
        full, in_one = await _all_pages(env, trust, 20_000, **where)
        for limit in (1, 2):
            paged, in_pages = await _all_pages(env, trust, limit, **where)
            assert _figures(paged) == _figures(full), (where, limit)
            assert [_figures(r) for r in paged.rows] == [_figures(r) for r in full.rows], (where, limit)
            assert in_pages == in_one, (where, limit)
