"""The school's contacts of each pupil, from the roster (`contact_email_1`, `_2`).

They are the school's personal data, held only to invite those people: addresses are stored
encrypted (bound to the pupil and position, like bars' addresses) under the linking code key,
with a keyed hash to match them, and erased when the pupil leaves or moves to another school.
A roster event that says nothing about contacts (`contacts` null) leaves them as they are; an
older event than the one that wrote them changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import cast

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import platform
from contracts.base import Event
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from linking.addresses import AddressVault
from linking.tables import Pupil, PupilContact

log = get_logger("linking.contacts")

# Keys per IN list.
_CHUNK = 500


def bound_to(pupil_id: str, position: int) -> str:
    """What a contact's ciphertext is bound to: a row copied to another pupil will not decrypt."""
    return f"contact:{pupil_id}:{position}"


async def apply(uow: UnitOfWork, items: list[tuple[str, Event]], vault: AddressVault) -> None:
    """After the roster copy took a batch: contacts as its newest events say; a pupil who left
    loses theirs, a pupil who moved those of the school they left."""
    s = uow.session
    latest: dict[str, platform.PupilUpserted] = {}
    upserted: set[str] = set()
    left: set[str] = set()
    for _, ev in items:
        if isinstance(ev, platform.PupilUpserted):
            upserted.add(ev.pupil_id)
            if ev.contacts is not None:
                latest[ev.pupil_id] = ev
        elif isinstance(ev, platform.PupilLeft):
            left.add(ev.pupil_id)
    if not (upserted or left):
        return
    wanted = sorted(upserted | left)
    pupils: dict[str, Pupil] = {}
    for start in range(0, len(wanted), _CHUNK):
        found = await s.execute(select(Pupil).where(col(Pupil.pupil_id).in_(wanted[start : start + _CHUNK])))
        pupils.update((p.pupil_id, p) for p in found.scalars())
    gone = {pid for pid, p in pupils.items() if p.left_at is not None}
    doomed, rewrite = _plan(pupils, await _held(s, sorted(pupils)), gone, upserted, latest)
    for start in range(0, len(doomed), _CHUNK):
        # No contact row is loaded in this session: nothing for the ORM to synchronise.
        await s.execute(
            delete(PupilContact)
            .where(col(PupilContact.id).in_(doomed[start : start + _CHUNK]))
            .execution_options(synchronize_session=False)
        )
    for pid, pupil, up in rewrite:
        seen: set[str] = set()
        for position, contact in enumerate(up.contacts or [], start=1):
            key = contact.email.strip().lower()
            if key in seen:
                continue
            seen.add(key)
            s.add(
                PupilContact(
                    pupil_id=pid,
                    school_id=pupil.school_id,
                    position=position,
                    email_hash=vault.lookup_hash(contact.email),
                    email_cipher=vault.encrypt(contact.email.strip(), bound_to=bound_to(pid, position)),
                    key_id=vault.key_id,
                    relationship=contact.relationship,
                    version_at=up.occurred_at,
                )
            )
    if gone:
        log.info("contacts_erased", pupils=len(gone))


async def _held(s: AsyncSession, pupil_ids: list[str]) -> dict[str, list[tuple[int, str, datetime]]]:
    """(row id, school, version) of every contact held of these pupils, read at once: a full
    roster import upserts every pupil, and a statement or two per pupil made linking spend four
    times as long on contacts as on the roster itself."""
    held: dict[str, list[tuple[int, str, datetime]]] = defaultdict(list)
    for start in range(0, len(pupil_ids), _CHUNK):
        rows = await s.execute(
            select(
                col(PupilContact.id),
                col(PupilContact.pupil_id),
                col(PupilContact.school_id),
                col(PupilContact.version_at),
            ).where(col(PupilContact.pupil_id).in_(pupil_ids[start : start + _CHUNK]))
        )
        for row_id, pid, school_id, version_at in rows:
            held[pid].append((cast(int, row_id), school_id, version_at))
    return held


def _plan(
    pupils: dict[str, Pupil],
    held: dict[str, list[tuple[int, str, datetime]]],
    gone: set[str],
    upserted: set[str],
    latest: dict[str, platform.PupilUpserted],
) -> tuple[list[int], list[tuple[str, Pupil, platform.PupilUpserted]]]:
    """The contact rows to delete, and the pupils whose contacts the batch writes anew."""
    doomed: list[int] = []
    rewrite: list[tuple[str, Pupil, platform.PupilUpserted]] = []
    for pid, pupil in sorted(pupils.items()):
        rows = held.get(pid, [])
        if pid in gone:
            doomed.extend(row_id for row_id, _, _ in rows)
            continue
        if pid not in upserted:
            continue
        # Contacts the school the pupil left gave are not the new school's to see.
        doomed.extend(row_id for row_id, school_id, _ in rows if school_id != pupil.school_id)
        up = latest.get(pid)
        if up is None or up.school_id != pupil.school_id:
            continue
        mine = [(row_id, version_at) for row_id, school_id, version_at in rows if school_id == pupil.school_id]
        if any(version_at > up.occurred_at for _, version_at in mine):
            continue  # written by a newer event than this one
        doomed.extend(row_id for row_id, _ in mine)
        rewrite.append((pid, pupil, up))
    return doomed, rewrite


async def of_pupils(
    s: AsyncSession, vault: AddressVault, school_id: str, pupil_ids: list[str]
) -> dict[str, list[tuple[str, str]]]:
    """Each pupil's contacts at the school, decrypted: (address, relationship), in position order.
    A row no configured key can read is left out (it was written under a key since dropped)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for start in range(0, len(pupil_ids), 500):
        rows = (
            await s.execute(
                select(PupilContact)
                .where(
                    col(PupilContact.pupil_id).in_(pupil_ids[start : start + 500]),
                    col(PupilContact.school_id) == school_id,
                )
                .order_by(col(PupilContact.pupil_id), col(PupilContact.position))
            )
        ).scalars()
        for row in rows:
            try:
                email = vault.decrypt(row.email_cipher, bound_to=bound_to(row.pupil_id, row.position))
            except Exception:  # noqa: BLE001 - unreadable under every key still configured
                log.warning("contact_unreadable", pupil_id=row.pupil_id, position=row.position)
                continue
            out.setdefault(row.pupil_id, []).append((email, row.relationship))
    return out
