"""The linking service over a real NATS on SQLite and PostgreSQL, as parents link and are
unlinked: redeeming codes, a code's room for carers and races for it, verification, the
school's policy, invitations, removal by staff, by the parent and when a pupil leaves, and the
audit rows each leaves."""

from __future__ import annotations

import asyncio

import pytest
from helpers import eventually
from linking_env import (
    Env,
    children,
    class_view,
    email_requests,
    invite,
    make_school,
    parent,
    printed_codes,
    redeem,
    refused,
)

from contracts import identity, notify, platform
from contracts import linking as contract
from contracts.base import utcnow
from contracts.kit.rpc import RpcError

pytestmark = pytest.mark.asyncio


async def test_printed_code_links_up_to_the_schools_number_of_carers(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=2)
    code = (await printed_codes(env, school, class_id))[0]
    carers = [parent() for _ in range(5)]
    for p in carers[:4]:
        reply = await redeem(env, code, p, relationship="carer")
        assert reply.created and reply.child.status == "linked" and reply.child.first_name == "Amy00"
    assert await refused(env, code, carers[4]) == contract.E_CODE_FULL
    again = await redeem(env, code, carers[0])
    assert not again.created and again.child.pupil_id == pupils[0], "already linked: 200 with the existing link"
    view = await class_view(env, school, class_id)
    amy = next(p for p in view.pupils if p.pupil_id == pupils[0])
    assert sorted(x.parent_id for x in amy.parents) == sorted(carers[:4])
    classes = await env.ask(contract.CLASSES, contract.ClassesRequest(scope=school.scope), contract.ClassesReply)
    assert classes.classes[0].linked_pupil_count == 1


async def test_races_one_link_per_invitation_and_four_per_printed_code(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=1)
    code = (await printed_codes(env, school, class_id))[0]
    results = await asyncio.gather(*(redeem(env, code, parent()) for _ in range(10)), return_exceptions=True)
    made = [r for r in results if isinstance(r, contract.RedeemReply)]
    full = [r for r in results if isinstance(r, RpcError) and r.code == contract.E_CODE_FULL]
    assert (len(made), len(full)) == (4, 6)

    _, request = await invite(env, school, pupils[0], "gran@example.org")
    invite_code = request["code"]
    results = await asyncio.gather(*(redeem(env, invite_code, parent()) for _ in range(10)), return_exceptions=True)
    made = [r for r in results if isinstance(r, contract.RedeemReply)]
    invalid = [r for r in results if isinstance(r, RpcError) and r.code == contract.E_INVALID_CODE]
    assert (len(made), len(invalid)) == (1, 9)


async def test_registration_link_waits_for_verification_then_activates(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=1)
    code = (await printed_codes(env, school, class_id))[0]
    p = parent()
    dry = await env.ask(
        contract.REDEEM, contract.RedeemRequest(code=code, dry_run=True, accept_aup=True), contract.RedeemReply
    )
    assert not dry.created and dry.aup.version
    reply = await redeem(env, code, p, verified=False)
    assert reply.child.status == "awaiting_verification"
    await env.publish(identity.PARENT_VERIFIED, identity.ParentVerified(parent_id=p))

    async def linked() -> bool:
        return (await children(env, p))[0].status == "linked"

    await eventually(linked, timeout=10)
    activated = await eventually(lambda: email_requests(env, "link_activated"), timeout=10)  # any parent's so far
    assert any(e["parent_id"] == p and e["pupil_first_name"] == "Amy00" for e in activated)
    active = await env.ask(contract.ACTIVE_PUPILS, contract.ParentRequest(parent_id=p), contract.ActivePupilsReply)
    assert active.pupil_ids == pupils


async def test_policy_must_be_accepted_once_per_school_version(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=2)
    first, second = await printed_codes(env, school, class_id)
    p = parent()
    assert await refused(env, first, p, accept_aup=False) == contract.E_AUP_REQUIRED
    assert await children(env, p) == []
    await redeem(env, first, p, accept_aup=True)
    reply = await redeem(env, second, p, accept_aup=False)
    assert reply.created, "the school's policy is already accepted"


async def test_removal_siblings_everywhere_and_reinvitation(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=3)
    codes = await printed_codes(env, school, class_id)
    dad = parent()
    for c in codes:
        await redeem(env, c, dad, relationship="father")
    assert len(await children(env, dad)) == 3

    await env.ask(
        contract.REMOVE_PARENT,
        contract.RemoveParentRequest(scope=school.scope, actor_id="head", pupil_id=pupils[1], parent_id=dad),
        contract.Done,
    )
    assert sorted(c.pupil_id for c in await children(env, dad)) == sorted([pupils[0], pupils[2]])
    # The code that was used must not undo the school's removal.
    assert await refused(env, codes[1], dad) == contract.E_INVALID_CODE

    listed = await env.ask(
        contract.PARENT_PUPILS,
        contract.StaffParentRequest(scope=school.scope, parent_id=dad),
        contract.ParentPupilsReply,
    )
    assert len(listed.pupils) == 2
    removed = await env.ask(
        contract.REMOVE_PARENT_EVERYWHERE,
        contract.StaffParentRequest(scope=school.scope, actor_id="head", parent_id=dad),
        contract.RemovedReply,
    )
    assert sorted(removed.pupil_ids) == sorted([pupils[0], pupils[2]])
    assert await children(env, dad) == []

    # Re-inviting works: a new invitation, a new code.
    _, request = await invite(env, school, pupils[1], "dad@example.org")
    assert request["to"] == "dad@example.org" and request["pupil_first_name"] == "Amy01"
    assert (await redeem(env, request["code"], dad)).created
    trail = await env.ask(
        contract.AUDIT, contract.AuditRequest(scope=school.scope, pupil_id=pupils[1]), contract.AuditReply
    )
    actions = [(e.action, e.actor) for e in trail.entries]
    assert actions == [
        ("code_regenerated", "staff:staff-1"),
        ("link_created", f"parent:{dad}"),
        ("link_removed", "staff:head"),
        ("invitation_sent", "staff:head"),
        ("link_created", f"parent:{dad}"),
    ]
    removed_events = [e for e in env.events(contract.LINK_REMOVED) if e["parent_id"] == dad]
    assert len(removed_events) == 3 and all(e["by"] == "staff" for e in removed_events)


async def test_invitations_revoke_earlier_ones_and_show_bounces(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=1)
    first, request = await invite(env, school, pupils[0], "Mum@Example.org")
    first_code = request["code"]
    second, _ = await invite(env, school, pupils[0], "mum@example.org")
    await env.publish(
        notify.EMAIL_FAILED,
        notify.EmailFailed(
            request_id="r",
            kind="invitation",
            reference=f"invitation:{second.invitation_id}",
            attempts=1,
            reason="rejected",
            smtp_code=550,
        ),
    )

    async def statuses() -> dict | None:
        view = await class_view(env, school, class_id)
        got = {i.invitation_id: i.status for i in view.pupils[0].invitations}
        return got if got.get(second.invitation_id) == "bounced" else None

    got = await eventually(statuses, timeout=10)
    assert got[first.invitation_id] == "revoked"
    assert await refused(env, first_code, parent()) == contract.E_INVALID_CODE
    with pytest.raises(RpcError) as bad:
        await env.ask(
            contract.INVITE,
            contract.InviteRequest(scope=school.scope, pupil_id=pupils[0], email="not an address"),
            contract.InvitationView,
        )
    assert bad.value.code == contract.E_VALIDATION


async def test_a_pupil_who_leaves_is_unlinked(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=2)
    codes = await printed_codes(env, school, class_id)
    mum = parent()
    for c in codes:
        await redeem(env, c, mum)
    left = platform.PupilLeft(pupil_id=pupils[0], occurred_at=utcnow())
    await env.publish(platform.PUPIL_LEFT, left)
    await env.applied([left])

    async def one_left() -> bool:
        return [c.pupil_id for c in await children(env, mum)] == [pupils[1]]

    await eventually(one_left, timeout=10)
    # The parent unlinks the other child themselves.
    await env.ask(contract.UNLINK, contract.UnlinkRequest(parent_id=mum, pupil_id=pupils[1]), contract.Done)
    assert await children(env, mum) == []


async def test_concurrent_access_checks_each_get_their_own_parents_children(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=4)
    codes = await printed_codes(env, school, class_id)
    parents = {parent(): set() for _ in range(6)}
    for i, p in enumerate(parents):
        for k in (i % 4, (i + 1) % 4):
            await redeem(env, codes[k], p)
            parents[p].add(pupils[k])
    asks = [*parents, *parents, *parents, parent()]  # and one with no child at all

    async def active(p: str) -> set[str]:
        return set(
            (
                await env.ask(contract.ACTIVE_PUPILS, contract.ParentRequest(parent_id=p), contract.ActivePupilsReply)
            ).pupil_ids
        )

    answers = await asyncio.gather(*(active(p) for p in asks))
    for p, answer in zip(asks, answers, strict=True):
        assert answer == parents.get(p, set()), "each parent sees their own children only"


async def test_many_parents_pupils_in_one_request_each_only_their_own(watched: Env) -> None:
    env = watched
    school, class_id, pupils = await make_school(env, pupils=3)
    codes = await printed_codes(env, school, class_id)
    a, b, nobody = parent(), parent(), parent()
    for code in codes[:2]:
        await redeem(env, code, a)
    await redeem(env, codes[2], b)
    await redeem(env, codes[0], b, relationship="carer")
    await env.ask(contract.UNLINK, contract.UnlinkRequest(parent_id=b, pupil_id=pupils[0]), contract.Done)

    many = await env.ask(
        contract.ACTIVE_PUPILS_MANY,
        contract.ParentsRequest(parent_ids=[nobody, b, a, b]),
        contract.ActivePupilsManyReply,
    )
    assert many.pupil_ids == {a: pupils[:2], b: [pupils[2]]}, "each parent's linked pupils only; none, no entry"
    for p in (a, b):
        one = await env.ask(contract.ACTIVE_PUPILS, contract.ParentRequest(parent_id=p), contract.ActivePupilsReply)
        assert one.pupil_ids == many.pupil_ids[p], "the same answer as asking for that parent alone"

    with pytest.raises(RpcError) as refused_whole:
        await env.ask(
            contract.ACTIVE_PUPILS_MANY,
            contract.ParentsRequest.model_construct(parent_ids=[parent() for _ in range(contract.MAX_PARENTS + 1)]),
            contract.ActivePupilsManyReply,
        )
    assert refused_whole.value.code == "invalid_request"
