"""The school's contacts of each pupil, as linking keeps them from the roster's events: written
anew by the newest event that names them, kept by one that says nothing of them, left as they are
by an older one, erased when the pupil leaves or moves school; a whole class at a time."""

from __future__ import annotations

from datetime import timedelta

from linking_env import Env, make_school, uid

from contracts import platform
from contracts.base import utcnow
from linking import contacts
from linking.addresses import AddressVault


async def held(env: Env, school_id: str, pupil_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each pupil's contacts at the school as linking reads them back, decrypted."""
    runtime = env.runtime
    vault = AddressVault(runtime.settings.linking_code_key)  # type: ignore[attr-defined]
    async with runtime.db.reader() as s:  # type: ignore[attr-defined]
        return await contacts.of_pupils(s, vault, school_id, pupil_ids)


def upserted(school_id: str, pupil_id: str, class_id: str, mails: list[str] | None, **kw) -> platform.PupilUpserted:
    return platform.PupilUpserted(
        school_id=school_id,
        pupil_id=pupil_id,
        first_name="Amy",
        last_name="Smith",
        class_ids=[class_id],
        contacts=None if mails is None else [platform.RosterContact(email=m, relationship="Mother") for m in mails],
        **kw,
    )


async def apply(env: Env, events: list[tuple[str, platform.Event]]) -> None:
    for subject, ev in events:
        await env.publish(subject, ev)
    await env.applied([ev for _, ev in events])


async def test_a_class_of_contacts_written_replaced_kept_and_erased(env: Env) -> None:
    school, class_id, pupils = await make_school(env, pupils=30)
    sid = school.school_id
    t0 = utcnow()
    await apply(
        env,
        [
            (
                platform.PUPIL_UPSERTED,
                upserted(sid, pid, class_id, [f"mum.{pid}@example.org", f"dad.{pid}@example.org"], occurred_at=t0),
            )
            for pid in pupils
        ],
    )
    first = await held(env, sid, pupils)
    assert first == {
        pid: [(f"mum.{pid}@example.org", "Mother"), (f"dad.{pid}@example.org", "Mother")] for pid in pupils
    }

    # The whole class again, in one go: new contacts for the first ten, none named for the next
    # ten (kept), and for the last ten an event older than the one that wrote theirs (ignored).
    later, earlier = t0 + timedelta(seconds=5), t0 - timedelta(seconds=5)
    events = [
        *[
            (platform.PUPIL_UPSERTED, upserted(sid, pid, class_id, [f"carer.{pid}@example.org"], occurred_at=later))
            for pid in pupils[:10]
        ],
        *[(platform.PUPIL_UPSERTED, upserted(sid, pid, class_id, None, occurred_at=later)) for pid in pupils[10:20]],
        *[
            (platform.PUPIL_UPSERTED, upserted(sid, pid, class_id, ["stale@example.org"], occurred_at=earlier))
            for pid in pupils[20:]
        ],
    ]
    await apply(env, events)
    second = await held(env, sid, pupils)
    assert {pid: second[pid] for pid in pupils[:10]} == {
        pid: [(f"carer.{pid}@example.org", "Mother")] for pid in pupils[:10]
    }
    assert {pid: second[pid] for pid in pupils[10:]} == {pid: first[pid] for pid in pupils[10:]}

    # One pupil leaves, one moves to another school of the trust: the school's contacts of both
    # go, and the new school does not see the old one's.
    gone, moved = pupils[0], pupils[11]
    other, other_class = uid("school"), uid("class")
    await apply(
        env,
        [
            (platform.PUPIL_LEFT, platform.PupilLeft(pupil_id=gone, occurred_at=later + timedelta(seconds=1))),
            (
                platform.SCHOOL_UPSERTED,
                platform.SchoolUpserted(
                    trust_id=school.trust_id, school_id=other, name="Elm", timezone="Europe/London"
                ),
            ),
            (platform.CLASS_UPSERTED, platform.ClassUpserted(school_id=other, class_id=other_class, name="Wrens")),
            (
                platform.PUPIL_UPSERTED,
                upserted(other, moved, other_class, None, occurred_at=later + timedelta(seconds=1)),
            ),
        ],
    )
    third = await held(env, sid, pupils)
    assert gone not in third and moved not in third
    assert await held(env, other, [moved]) == {}
    assert {pid: third[pid] for pid in pupils if pid not in (gone, moved)} == {
        pid: second[pid] for pid in pupils if pid not in (gone, moved)
    }
