"""The code key's rotation: which rows a key can read, and rewriting them under the current key.

Every code, bar and roster contact row records the key it was written with (`key_id`). At
start-up linking refuses to run if any row was written under a key that is neither
`PORTAL_LINKING_CODE_KEY` nor one of `PORTAL_LINKING_CODE_OLD_KEYS`: with a changed key those
codes would be refused, those bars silently lifted and those parents' addresses lost. `rekey` (`portal linking rekey`) rewrites every row it can under the
current key, after which the old keys can be dropped.

An invitation's code is kept only as a keyed hash (it is emailed once and never shown again), so
it cannot be hashed again under a new key: one that can still be used stays under its old key
until it expires or is used (the old key must be kept until then); one that can no longer be
used is given a hash nothing typed can match, which changes nothing a parent sees (a used,
revoked or expired code answers `invalid_code` like one that never existed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from contracts.kit.db import Database
from linking import codes, contacts
from linking.addresses import AddressVault
from linking.bars import bound, live_key
from linking.tables import Bar, LinkCode, PupilContact

BATCH = 500


@dataclass(frozen=True)
class ForeignRows:
    """Rows written under a key linking was not given."""

    codes: int
    bars: int
    contacts: int = 0

    def __bool__(self) -> bool:
        return bool(self.codes or self.bars or self.contacts)


async def foreign_rows(db: Database, vault: codes.CodeVault, addresses: AddressVault) -> ForeignRows:
    """How many codes, bars and roster contacts were written under none of the configured keys."""

    async def count(s: Any, model: Any, key_ids: Iterable[str]) -> int:
        found = await s.scalar(select(func.count()).select_from(model).where(col(model.key_id).not_in(sorted(key_ids))))
        return found or 0

    async with db.reader() as s:
        return ForeignRows(
            codes=await count(s, LinkCode, vault.key_ids),
            bars=await count(s, Bar, addresses.key_ids),
            contacts=await count(s, PupilContact, addresses.key_ids),
        )


def foreign_key_message(found: ForeignRows) -> str:
    """What the operator is told when linking refuses to start over `found`."""
    return (
        f"linking's database holds {found.codes} link code(s), {found.bars} bar(s) and {found.contacts} parent "
        f"contact(s) written under a key that is neither {codes.KEY_SETTING} nor one of {codes.OLD_KEYS_SETTING}: "
        "with this key those codes would be refused, those bars lifted and those contacts unreadable. Set "
        f"{codes.KEY_SETTING} back to the key they were made with, or add that key to {codes.OLD_KEYS_SETTING} "
        "(then `portal linking rekey` moves them to the new key)"
    )


@dataclass
class RekeyReport:
    """What `rekey` did, and what it could not do."""

    codes: int = 0
    bars: int = 0
    contacts: int = 0
    retired_invitation_codes: int = 0
    # Invitation codes that still work under an old key, and when the last of them expires.
    waiting_invitation_codes: int = 0
    waiting_until: datetime | None = None
    # Rows no configured key can read (the key that wrote them is not configured).
    unreadable_codes: int = 0
    unreadable_bars: int = 0
    unreadable_contacts: int = 0
    unreadable_ids: list[str] = field(default_factory=list)

    @property
    def old_keys_needed(self) -> bool:
        """Whether any row still needs an old key."""
        return bool(
            self.waiting_invitation_codes or self.unreadable_codes or self.unreadable_bars or self.unreadable_contacts
        )


async def rekey(db: Database, vault: codes.CodeVault, addresses: AddressVault, *, now: datetime) -> RekeyReport:
    """Rewrite every code and bar not under the current key under it, in batches; safe while
    linking runs (each replica reads both) and safe to run again."""
    report = RekeyReport()
    await _rekey_codes(db, vault, now, report)
    await _rekey_bars(db, addresses, report)
    await _rekey_contacts(db, addresses, report)
    return report


async def _rows_not_under(db: Database, model: Any, key_id: str) -> AsyncIterator[list[Any]]:
    """Every row of `model` under another key than `key_id`, a locked batch at a time; each batch
    is committed when the caller asks for the next."""
    after: Any = None
    while True:
        async with db.session() as s:
            query = select(model).where(col(model.key_id) != key_id)
            if after is not None:
                query = query.where(col(model.id) > after)
            rows = list((await s.execute(query.order_by(col(model.id)).limit(BATCH).with_for_update())).scalars())
            if not rows:
                return
            after = rows[-1].id
            yield rows


async def _rekey_codes(db: Database, vault: codes.CodeVault, now: datetime, report: RekeyReport) -> None:
    async for rows in _rows_not_under(db, LinkCode, vault.key_id):
        for row in rows:
            if row.code_cipher is not None:
                try:
                    code = vault.decrypt(row.code_cipher, pupil_id=row.pupil_id)
                except Exception:  # noqa: BLE001 - under a key not configured: counted, left alone
                    report.unreadable_codes += 1
                    report.unreadable_ids.append(f"link code {row.id}")
                    continue
                row.code_hash = vault.lookup_hash(code)
                row.code_cipher = vault.encrypt(code, pupil_id=row.pupil_id)
                row.key_id = vault.key_id
                report.codes += 1
            elif row.key_id not in vault.key_ids:
                report.unreadable_codes += 1
                report.unreadable_ids.append(f"link code {row.id}")
            elif row.revoked_at is None and row.expires_at > now:
                report.waiting_invitation_codes += 1
                if report.waiting_until is None or row.expires_at > report.waiting_until:
                    report.waiting_until = row.expires_at
            else:
                # A code that can no longer link anyone: a hash no typed code can match.
                row.code_hash = vault.lookup_hash(f"retired:{row.id}")
                row.key_id = vault.key_id
                report.retired_invitation_codes += 1


async def _rekey_bars(db: Database, addresses: AddressVault, report: RekeyReport) -> None:
    async for rows in _rows_not_under(db, Bar, addresses.key_id):
        for bar in rows:
            try:
                email = addresses.decrypt(bar.email_cipher, bound_to=bound(bar.pupil_id, bar.id))
            except Exception:  # noqa: BLE001 - under a key not configured: counted, left alone
                report.unreadable_bars += 1
                report.unreadable_ids.append(f"bar {bar.id}")
                continue
            bar.email_hash = addresses.lookup_hash(email)
            bar.email_cipher = addresses.encrypt(email, bound_to=bound(bar.pupil_id, bar.id))
            bar.key_id = addresses.key_id
            if bar.live_key is not None:
                bar.live_key = live_key(bar.pupil_id, bar.email_hash)
            report.bars += 1


async def _rekey_contacts(db: Database, addresses: AddressVault, report: RekeyReport) -> None:
    """The roster's parent contacts, encrypted like bars' addresses, under the current key."""
    async for rows in _rows_not_under(db, PupilContact, addresses.key_id):
        for row in rows:
            bound_to = contacts.bound_to(row.pupil_id, row.position)
            try:
                email = addresses.decrypt(row.email_cipher, bound_to=bound_to)
            except Exception:  # noqa: BLE001 - under a key not configured: counted, left alone
                report.unreadable_contacts += 1
                report.unreadable_ids.append(f"contact {row.id}")
                continue
            row.email_hash = addresses.lookup_hash(email)
            row.email_cipher = addresses.encrypt(email, bound_to=bound_to)
            row.key_id = addresses.key_id
            report.contacts += 1
