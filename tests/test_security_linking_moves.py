"""A pupil moving school, and the limit on pending invitations, on SQLite and PostgreSQL: the
linking service driven through its requests, with the platform's roster events published on NATS
(tests/test_security_linking.py attacks the same through the gateway)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from linking_env import (
    Env,
    School,
    children,
    class_view,
    invite,
    make_school,
    parent,
    printed_codes,
    redeem,
    refused,
    uid,
)

from contracts import linking as contract
from contracts import platform

pytestmark = pytest.mark.asyncio


async def trail(env: Env, school: School, pupil_id: str) -> list[contract.AuditEntry]:
    reply = await env.ask(
        contract.AUDIT, contract.AuditRequest(scope=school.scope, pupil_id=pupil_id), contract.AuditReply
    )
    return reply.entries


async def test_a_move_ends_the_old_schools_links_invitations_and_codes(watched: Env) -> None:
    env = watched
    old, old_class, (amy, ben) = await make_school(env, pupils=2)
    new, new_class, _ = await make_school(env, pupils=1, name="Birch School")
    amy_code, ben_code = await printed_codes(env, old, old_class)
    mum, dad = parent(), parent()
    await redeem(env, amy_code, mum, email="mum@example.org")
    await redeem(env, ben_code, mum, email="mum@example.org")
    await redeem(env, amy_code, dad, email="dad@example.org", relationship="father")
    _, invitation = await invite(env, old, amy, "gran@example.org")

    moved = platform.PupilUpserted(
        school_id=new.school_id, pupil_id=amy, first_name="Amy00", last_name="Smith00", class_ids=[new_class]
    )
    await env.publish(platform.PUPIL_UPSERTED, moved)
    await env.applied([moved])

    assert [c.pupil_id for c in await children(env, mum)] == [ben], "the sibling who stayed is unaffected"
    assert await children(env, dad) == []
    removed = [e for e in env.events(contract.LINK_REMOVED) if e["pupil_id"] == amy]
    assert sorted((e["parent_id"], e["by"], e["school_id"]) for e in removed) == sorted(
        [(mum, "school_changed", old.school_id), (dad, "school_changed", old.school_id)]
    )

    # The old school keeps its own trail, which says why; the new school sees none of it.
    entries = [(e.action, e.actor, e.parent_id, e.reason) for e in await trail(env, old, amy)]
    assert sorted(entries[-2:]) == sorted(
        [("link_removed", "system", mum, "school_changed"), ("link_removed", "system", dad, "school_changed")]
    )
    assert await trail(env, new, amy) == []
    assert amy not in [p.pupil_id for p in (await class_view(env, old, old_class)).pupils]
    row = next(p for p in (await class_view(env, new, new_class)).pupils if p.pupil_id == amy)
    assert (row.parents, row.invitations, row.code_expires_at) == ([], [], None)

    # Nothing the old school handed out links the child now: not its card, not its invitation.
    for code in (amy_code, invitation["code"]):
        assert await refused(env, code, parent(), email="someone@example.org") == contract.E_INVALID_CODE
        assert await refused(env, code, mum, email="mum@example.org") == contract.E_INVALID_CODE

    # An older upsert arriving late does not move the pupil back, nor bring anything back.
    late = platform.PupilUpserted(
        school_id=old.school_id,
        pupil_id=amy,
        first_name="Amy00",
        last_name="Smith00",
        class_ids=[old_class],
        occurred_at=moved.occurred_at - timedelta(minutes=5),
    )
    await env.publish(platform.PUPIL_UPSERTED, late)
    await env.applied([late])
    assert amy in [p.pupil_id for p in (await class_view(env, new, new_class)).pupils]
    assert amy not in [p.pupil_id for p in (await class_view(env, old, old_class)).pupils]
    assert await children(env, dad) == []
    assert await refused(env, amy_code, parent(), email="x@example.org") == contract.E_INVALID_CODE

    # The new school's own codes link the child as usual.
    linked = [
        (await redeem(env, c, dad, email="dad@example.org")).child for c in await printed_codes(env, new, new_class)
    ]
    assert amy in [c.pupil_id for c in linked if c is not None]
    row = next(p for p in (await class_view(env, new, new_class)).pupils if p.pupil_id == amy)
    assert [x.parent_id for x in row.parents] == [dad]


async def test_the_eleventh_pending_invitation_of_a_pupil_is_refused(watched: Env) -> None:
    env = watched
    school, class_id, (amy, ben) = await make_school(env, pupils=2)
    for i in range(10):
        await invite(env, school, amy, f"carer{i}@example.org")

    def request(email: str) -> contract.InviteRequest:
        return contract.InviteRequest(scope=school.scope, actor_id="head", pupil_id=amy, email=email)

    failure = await env.fails(contract.INVITE, request(f"{uid('more')}@example.org"))
    assert failure.code == contract.E_TOO_MANY_INVITATIONS
    view = next(p for p in (await class_view(env, school, class_id)).pupils if p.pupil_id == amy)
    assert len(view.invitations) == 10 and {i.status for i in view.invitations} == {"invited"}

    # Replacing one is allowed; an accepted one no longer counts; another pupil has room.
    _, again = await invite(env, school, amy, "carer0@example.org")
    await redeem(env, again["code"], parent(), email="carer0@example.org")
    await invite(env, school, amy, "carer10@example.org")
    assert (await env.fails(contract.INVITE, request("carer11@example.org"))).code == contract.E_TOO_MANY_INVITATIONS
    await invite(env, school, ben, "carer11@example.org")
