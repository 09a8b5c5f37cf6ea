"""The digest: who is due at a moment, and a run that records their digests in the ledger.

A parent's digest is due on the days of their schedule (`weekly`: Fridays; `daily`: Monday to
Friday) from 16:00 until midnight, in the timezone of the school of their first linked child. A
run at T records, for every parent due at T, one email whose request id is
`digest:<parent id>:<that local date>`: the ledger's unique request id makes the second run of the
day, a run on another replica at the same moment, and a run retried after a crash record nothing
more. Until midnight, so that a run that comes late (a replica restarting at 16:05, an operator
running it at 18:00) still sends that day's; not later, so that Monday morning never sends last
Friday's. The key is the date, not the schedule, so a parent who switches from daily to weekly on
a Friday gets one that day, not two.

The run asks identity for the parents wanting a digest (ids only, a page at a time), linking for
their linked children and schools' timezones, then, for the parents due and not yet recorded,
identity for their addresses (with a fresh one-click unsubscribe token each) and overview for the
children's homework, messages and stars. The sender sends what it records like every email.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlmodel import col

from contracts import identity, linking, overview
from contracts import notify as contract
from contracts.addresses import normalise_email
from contracts.base import utcnow
from contracts.kit import rpc
from contracts.kit.db import insert
from contracts.kit.logs import get_logger
from contracts.kit.runtime import ServiceRuntime
from notify.tables import BULK, PENDING, Email

if TYPE_CHECKING:
    from notify.sender import Sender

log = get_logger("notify.digest")

SEND_AT = time(16, 0)
FRIDAY = 4
# Pupils per overview request (its reply stays well under NATS's 1 MB), asked concurrently.
PUPILS_PER_REQUEST = 400
RPC_TIMEOUT = 30.0


def zone(name: str) -> ZoneInfo:
    """The school's timezone; a name that is not one (refused at import anyway) counts as UTC."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def due_day(schedule: str, timezone: str, at: datetime) -> date | None:
    """The local date whose digest is due at `at` under `schedule` in `timezone`, or None: a
    scheduled day, from 16:00 local until the day ends."""
    local = at.astimezone(zone(timezone))
    if local.time() < SEND_AT:
        return None
    if schedule == "weekly" and local.weekday() == FRIDAY:
        return local.date()
    if schedule == "daily" and local.weekday() < 5:
        return local.date()
    return None


def request_id(parent_id: str, day: date) -> str:
    """The ledger's key of a parent's digest of a day."""
    return f"digest:{parent_id}:{day.isoformat()}"


@dataclass
class RunCounts:
    """What a run did, added up page by page."""

    recipients: int = 0
    no_children: int = 0
    not_due: int = 0
    already: int = 0
    recorded: int = 0


class DigestRuns:
    """Runs of the digest, asked for (`rpc.notify.digest_run.v1`) or on the schedule."""

    def __init__(
        self, runtime: ServiceRuntime, sender: Sender | None, *, public_url: str, every_seconds: float
    ) -> None:
        self.runtime = runtime
        self.sender = sender
        self.public_url = public_url
        self.every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None

    async def run_request(self, req: contract.DigestRunRequest) -> contract.DigestRunReply:
        """`rpc.notify.digest_run.v1`."""
        at = req.at or utcnow()
        counts = await self.run(at)
        return contract.DigestRunReply(at=at, **counts.__dict__)

    async def run(self, at: datetime) -> RunCounts:
        """Record the digests due at `at`; the sender sends them."""
        counts = RunCounts()
        after = ""
        nc = self.runtime.broker.connection
        while True:
            page = await rpc.call(
                nc,
                identity.DIGEST_RECIPIENTS,
                identity.DigestRecipientsRequest(after=after),
                timeout=RPC_TIMEOUT,
            )
            if page.recipients:
                await self._page(page.recipients, at, counts)
            if page.after is None:
                break
            after = page.after
        log.info("digest_run", at=at.isoformat(), **counts.__dict__)
        if counts.recorded and self.sender is not None:
            self.sender.wake()
        return counts

    async def _page(self, recipients: list[identity.DigestRecipient], at: datetime, counts: RunCounts) -> None:
        nc = self.runtime.broker.connection
        counts.recipients += len(recipients)
        wanted = {r.account_id: r for r in recipients}
        children = await rpc.call(
            nc, linking.DIGEST_CHILDREN, linking.DigestChildrenRequest(parent_ids=list(wanted)), timeout=RPC_TIMEOUT
        )
        linked = {p.parent_id: p for p in children.parents if p.children and p.parent_id in wanted}
        counts.no_children += len(wanted) - len(linked)
        due: dict[str, tuple[str, date]] = {}
        for parent_id, parent in linked.items():
            day = due_day(wanted[parent_id].digest, parent.children[0].timezone, at)
            if day is None:
                counts.not_due += 1
            else:
                due[parent_id] = (request_id(parent_id, day), day)
        if not due:
            return
        # Those recorded by an earlier run need neither a token nor a composition; the unique
        # request id still decides when two runs get here at once.
        async with self.runtime.db.reader() as s:
            recorded = set(
                (
                    await s.execute(
                        select(col(Email.request_id)).where(col(Email.request_id).in_([k for k, _ in due.values()]))
                    )
                ).scalars()
            )
        todo = {pid: v for pid, v in due.items() if v[0] not in recorded}
        counts.already += len(due) - len(todo)
        if not todo:
            return
        addresses, parts = await asyncio.gather(
            rpc.call(
                nc, identity.DIGEST_ADDRESSES, identity.DigestAddressesRequest(ids=list(todo)), timeout=RPC_TIMEOUT
            ),
            self._children(sorted({c.pupil_id for pid in todo for c in linked[pid].children}), at),
        )
        rows = []
        now = utcnow()
        for address in addresses.addresses:
            key, day = todo[address.id]
            parent = linked[address.id]
            email = contract.DigestEmail(
                event_id=key,
                to=address.email,
                to_name=address.name,
                parent_id=address.id,
                reference=f"digest:{day.isoformat()}",
                schedule=wanted[address.id].digest,
                language=wanted[address.id].language,
                period=day,
                timezone=parent.children[0].timezone,
                children=[self._part(child, parts[child.pupil_id]) for child in parent.children],
                unsubscribe_url=f"{self.public_url}/unsubscribe/{address.unsubscribe_token}",
                preferences_url=f"{self.public_url}/account",
            )
            rows.append(
                {
                    "request_id": key,
                    "kind": email.kind,
                    "reference": email.reference,
                    "request": email.model_dump_json(),
                    "parent_id": address.id,
                    "recipient": address.email,
                    "recipient_key": normalise_email(address.email),
                    "status": PENDING,
                    "priority": BULK,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            )
        counts.recorded += await self._record(rows)

    async def _children(self, pupil_ids: list[str], at: datetime) -> dict[str, overview.ChildDigest]:
        chunks = [pupil_ids[i : i + PUPILS_PER_REQUEST] for i in range(0, len(pupil_ids), PUPILS_PER_REQUEST)]
        replies = await asyncio.gather(
            *(
                rpc.call(
                    self.runtime.broker.connection,
                    overview.DIGEST,
                    overview.DigestRequest(pupil_ids=chunk, at=at),
                    timeout=RPC_TIMEOUT,
                )
                for chunk in chunks
            )
        )
        return {c.pupil_id: c for reply in replies for c in reply.children}

    @staticmethod
    def _part(child: linking.DigestChild, found: overview.ChildDigest) -> contract.DigestChildPart:
        return contract.DigestChildPart(
            first_name=child.first_name,
            school_name=child.school_name,
            homework=[
                contract.DigestHomework(title=h.title, due_at=h.due_at, overdue=h.status == "overdue")
                for h in found.homework
            ],
            homework_more=max(0, found.homework_total - len(found.homework)),
            messages=[
                contract.DigestMessage(from_name=m.from_name, subject=m.subject, sent_at=m.sent_at)
                for m in found.messages
            ],
            messages_more=max(0, found.messages_total - len(found.messages)),
            stars_total=found.stars.total,
            stars=[contract.DigestStar(stars=a.stars, reason=a.reason, at=a.at) for a in found.stars.awards],
            homework_url=found.links.homework,
            files_url=found.links.files,
            messages_url=found.links.messages,
        )

    async def _record(self, rows: list[dict[str, object]]) -> int:
        """Insert the digests; those another run recorded meanwhile are left as they are."""
        if not rows:
            return 0
        async with self.runtime.db.session() as s:
            # The rows as parameters of one cached statement (sent in batches by the driver),
            # not as one VALUES list: compiling that anew for every page took a tenth of the run.
            stmt = insert(s, Email).on_conflict_do_nothing(index_elements=["request_id"]).returning(col(Email.id))
            return len((await s.execute(stmt, rows)).all())

    # -- the schedule -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Run every `every_seconds` (0: never); every replica may, the ledger keeps it to one."""
        if self.every_seconds > 0:
            self._task = asyncio.create_task(self._forever(), name="notify-digest")

    async def stop(self) -> None:
        """Stop the schedule."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping: how it ended does not matter
                pass
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.every_seconds)
            try:
                await self.run(utcnow())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a part away for a moment: the next run catches up
                log.warning("digest_run_failed", error=type(exc).__name__)
