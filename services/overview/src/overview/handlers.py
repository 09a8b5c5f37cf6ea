"""What overview does: applies the platform's events to its projections, and answers
`rpc.overview.get.v1` from memory or, for the pupils missing there, from the database."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import quote

from nats.aio.msg import Msg

from contracts.base import Event, utcnow
from contracts.kit.gather import ReadGatherer
from contracts.kit.outbox import UnitOfWork
from contracts.kit.rpc import RawReply
from contracts.kit.runtime import ServiceRuntime
from contracts.overview import (
    CHANGED_NOTICE,
    DIGEST_ITEMS,
    ChangedNotice,
    ChildDigest,
    ChildRequest,
    DigestReply,
    DigestRequest,
    HandoffTarget,
    HomeworkReply,
    Links,
    MessagesReply,
    OverviewRequest,
    StarsRequest,
    StarsWeek,
)
from overview import detail
from overview.cache import OverviewCache
from overview.projection import Batch, read_overviews

# Who sent a change notice: a replica hears its own notices too (NATS echoes them), and has
# already forgotten what they name when it sends them.
_SENDER = "Overview-Sender"


class Overviews:
    """The projections' writer and reader, with this replica's cache of answers."""

    def __init__(
        self, runtime: ServiceRuntime, cache: OverviewCache, defaults: dict[str, str], go: str | None = None
    ) -> None:
        self.runtime = runtime
        self.cache = cache
        self.defaults = defaults
        self.go = go
        # Cold reads of concurrent requests together: four queries for the lot, not per request.
        self.reads: ReadGatherer[bytes] = ReadGatherer(self._read)
        # The same for one child's detail: one query for every pupil asked meanwhile.
        self.homework_reads: ReadGatherer[HomeworkReply] = ReadGatherer(self._read_homework)
        self.message_reads: ReadGatherer[MessagesReply] = ReadGatherer(self._read_messages)
        self.star_reads: ReadGatherer[StarsWeek] = ReadGatherer(self._read_stars)
        self.target_reads: ReadGatherer[HandoffTarget] = ReadGatherer(self._read_targets)
        self._background: set[asyncio.Task[None]] = set()
        # This process's own, rather than its instance id, which settings may give two replicas.
        self._sender = uuid.uuid4().hex

    @staticmethod
    def fold(items: list[tuple[str, Event]]) -> Batch:
        """A batch of platform or settings events folded per row (no database: done while the
        batch before is written)."""
        batch = Batch()
        for subject, event in items:
            batch.add(subject, event)
        return batch

    async def write(self, uow: UnitOfWork, batch: Batch) -> None:
        """A folded batch (`fold`), in one transaction."""
        touched = await batch.write(uow.session)
        if touched:
            uow.after_commit(lambda: self._changed(touched))

    def _changed(self, pupil_ids: set[str]) -> None:
        self.cache.forget(pupil_ids)
        # Other replicas drop theirs too; best effort, since their entries expire anyway.
        notice = ChangedNotice(pupil_ids=sorted(pupil_ids)).model_dump_json().encode()
        publish = self.runtime.broker.connection.publish(CHANGED_NOTICE, notice, headers={_SENDER: self._sender})
        task = asyncio.get_running_loop().create_task(publish)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def listen_for_notices(self) -> None:
        """Hear the other replicas' change notices (core NATS, no stream)."""
        await self.runtime.broker.connection.subscribe(CHANGED_NOTICE, cb=self._on_notice)

    async def _on_notice(self, msg: Msg) -> None:
        if msg.headers is not None and msg.headers.get(_SENDER) == self._sender:
            # Our own: forgotten at commit (`_changed`). Hearing it again, the size of a batch's
            # pupils, took as long as acknowledging the batch's messages, and dropped answers
            # read since, which were fresh.
            return
        try:
            self.cache.forget(ChangedNotice.model_validate_json(msg.data).pupil_ids)
        except ValueError:
            pass

    async def _read(self, pupil_ids: list[str]) -> dict[str, bytes]:
        versions = {pid: self.cache.version(pid) for pid in pupil_ids}
        fresh = await read_overviews(self.runtime.db, pupil_ids, now=utcnow(), defaults=self.defaults, go=self.go)
        return {pid: self.cache.put(ov, versions[pid]) for pid, ov in fresh.items()}

    async def get(self, req: OverviewRequest) -> RawReply:
        """`rpc.overview.get.v1`: every requested pupil, in the order asked."""
        parts: dict[str, bytes] = {}
        missing = []
        for pid in req.pupil_ids:
            hit = self.cache.get(pid)
            if hit is None:
                missing.append(pid)
            else:
                parts[pid] = hit
        if missing:
            for pid, data in (await self.reads.get(missing)).items():
                assert data is not None  # read_overviews answers every pupil asked for
                parts[pid] = data
        # Assembled from cached JSON: no model is built or serialised again on a hit.
        return RawReply(b'{"children":[' + b",".join(parts[pid] for pid in dict.fromkeys(req.pupil_ids)) + b"]}")

    # -- one child in detail ------------------------------------------------------------------

    async def _read_homework(self, ids: list[str]) -> dict[str, HomeworkReply]:
        async with self.runtime.db.reader() as s:
            return await detail.read_homework(s, ids, now=utcnow())

    async def _read_messages(self, ids: list[str]) -> dict[str, MessagesReply]:
        async with self.runtime.db.reader() as s:
            return await detail.read_messages(s, ids)

    async def _read_stars(self, keys: list[str]) -> dict[str, StarsWeek]:
        async with self.runtime.db.reader() as s:
            return await detail.read_stars(s, keys, now=utcnow())

    async def _read_targets(self, ids: list[str]) -> dict[str, HandoffTarget]:
        async with self.runtime.db.reader() as s:
            return await detail.read_targets(s, ids, defaults=self.defaults)

    async def homework(self, req: ChildRequest) -> HomeworkReply:
        """`rpc.overview.homework.v1`."""
        found = await self.homework_reads.one(req.pupil_id)
        assert found is not None  # every pupil asked for is answered
        return found

    async def messages(self, req: ChildRequest) -> MessagesReply:
        """`rpc.overview.messages.v1`."""
        found = await self.message_reads.one(req.pupil_id)
        assert found is not None
        return found

    async def stars(self, req: StarsRequest) -> StarsWeek:
        """`rpc.overview.stars.v1`."""
        found = await self.star_reads.one(detail.star_key(req.pupil_id, req.week))
        assert found is not None
        return found

    async def target(self, req: ChildRequest) -> HandoffTarget:
        """`rpc.overview.target.v1`."""
        found = await self.target_reads.one(req.pupil_id)
        assert found is not None
        return found

    # -- the digest ---------------------------------------------------------------------------

    async def digest(self, req: DigestRequest) -> DigestReply:
        """`rpc.overview.digest.v1`: many pupils' digest content as at `req.at`, in three queries
        and one per school week (no cache: a run asks for each pupil once)."""
        ids = list(dict.fromkeys(req.pupil_ids))
        if not ids:
            return DigestReply(children=[])
        async with self.runtime.db.reader() as s:
            homework = await detail.read_homework(s, ids, now=req.at)
            messages = await detail.read_messages(s, ids)
            stars = await detail.read_stars(s, [detail.star_key(pid, None) for pid in ids], now=req.at)
        go = self.go or ""

        def link(pid: str, area: str) -> str:
            # Through the portal's handoff, which signs in and looks the school's templates up at the click.
            return f"{go}/go/{quote(pid, safe='')}/{area}"

        todo = {pid: [h for h in homework[pid].items if h.status != "done"] for pid in ids}
        return DigestReply(
            children=[
                ChildDigest(
                    pupil_id=pid,
                    homework=todo[pid][:DIGEST_ITEMS],
                    homework_total=len(todo[pid]),
                    messages=messages[pid].items[:DIGEST_ITEMS],
                    messages_total=len(messages[pid].items),
                    stars=stars[detail.star_key(pid, None)],
                    links=Links(
                        homework=link(pid, "homework"), files=link(pid, "files"), messages=link(pid, "messages")
                    ),
                )
                for pid in req.pupil_ids
            ]
        )
