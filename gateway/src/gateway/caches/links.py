"""Which children a parent may see right now, remembered per replica.

Every overview request needs it, so it is kept in memory: an entry goes when linking says a
link of that parent changed (`linking.link.>` on core NATS; every replica hears it), when this
replica removes a link itself (at once, before it answers), after a short time in any case, and
all at once after a reconnect (events may have been missed meanwhile).

Staff removing a parent's access (one pupil, all of them, or by a bar) must take effect on every
replica before they are told it is done: `removals()` waits, briefly, until this replica has
heard `linking.link.removed.v1` of each link that ended. Every replica subscribes to the same
subject, so once this one heard it, the others were sent it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from litestar.datastructures import State
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from contracts import linking
from contracts.kit.logs import get_logger

log = get_logger("gateway.caches.links")

STATE_KEY = "links_cache"


class Removals:
    """The links removed (`(parent_id, pupil_id)`) heard since it was opened, and those a change
    made through this replica expects to hear of."""

    def __init__(self, cache: LinksCache) -> None:
        self._cache = cache
        self.heard: set[tuple[str, str]] = set()
        self.expected: set[tuple[str, str]] = set()
        self._news = asyncio.Event()

    def heard_of(self, parent_id: str, pupil_id: str) -> None:
        """`linking.link.removed.v1` of this link arrived."""
        self.heard.add((parent_id, pupil_id))
        self._news.set()

    def expect(self, parent_id: str, pupil_id: str) -> None:
        """This link ended: this replica forgets the parent now, and waits for the event."""
        self._cache.forget(parent_id)
        self.expected.add((parent_id, pupil_id))

    async def wait(self, seconds: float) -> set[tuple[str, str]]:
        """Wait up to `seconds` to have heard of every expected removal; those not heard of."""
        deadline = asyncio.get_running_loop().time() + seconds
        while missing := self.expected - self.heard:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return missing
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), left)
        return set()


class LinksCache:
    """parent id -> (expiry, the pupil ids of their standing, active links)."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[list[str]]],
        ttl: float,
        max_entries: int = 200_000,
        *,
        removal_wait: float = 1.0,
    ) -> None:
        self.fetch = fetch  # linking's answer for one parent (`LinkingClient.active_pupils`)
        self.ttl = ttl
        self.max_entries = max_entries
        self.removal_wait = removal_wait
        self._entries: dict[str, tuple[float, tuple[str, ...]]] = {}
        self.generation = 0
        # False until the link events' subscription exists: without it there is nothing to wait for.
        self.live = False
        self._watches: set[Removals] = set()

    async def subscribe(self, nc: NatsClient) -> None:
        """Listen for link changes (called once the NATS connection is up)."""
        await nc.subscribe(linking.LINK_ALL, cb=self._on_link_event)
        self.live = True

    @contextlib.asynccontextmanager
    async def removals(self) -> AsyncIterator[Removals]:
        """Watch for link removals while a change is made: what the block `expect`s is forgotten
        at once, and the block ends only once this replica heard of each (or after
        `removal_wait` seconds, logged as an error: the other replicas may show the pupil until
        their entry expires). A block that raises waits for nothing."""
        # Opened before the change is asked for: the event may overtake linking's reply.
        watch = Removals(self)
        self._watches.add(watch)
        try:
            yield watch
            if self.live:
                for parent_id, pupil_id in sorted(await watch.wait(self.removal_wait)):
                    log.error(
                        "link_removal_not_seen",
                        awaited=linking.LINK_REMOVED,
                        parent_id=parent_id,
                        pupil_id=pupil_id,
                        waited_s=self.removal_wait,
                    )
        finally:
            self._watches.discard(watch)

    async def on_reconnect(self) -> None:
        """Forget everything: link events may have been missed while disconnected."""
        self.clear()

    async def _on_link_event(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
            parent_id = body["parent_id"]
        except (ValueError, KeyError, TypeError):
            self.clear()
            return
        self.forget(parent_id)
        if msg.subject == linking.LINK_REMOVED and isinstance(body.get("pupil_id"), str):
            for watch in self._watches:
                watch.heard_of(str(parent_id), body["pupil_id"])

    def forget(self, parent_id: str) -> None:
        """Drop one parent's entry (this replica changed their links)."""
        self._entries.pop(parent_id, None)
        self.generation += 1

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self.generation += 1

    async def active(self, parent_id: str) -> tuple[str, ...]:
        """The pupils this parent may see, from memory or from linking."""
        entry = self._entries.get(parent_id)
        now = time.monotonic()
        if entry is not None and entry[0] > now:
            return entry[1]
        generation = self.generation
        pupils = tuple(await self.fetch(parent_id))
        # Not kept if a change was heard while asking: the answer may predate it.
        if generation == self.generation and self.ttl > 0:
            self._entries.pop(parent_id, None)
            while self._entries and len(self._entries) >= self.max_entries:
                # The oldest entry (dicts keep insertion order), not everything: emptying the
                # cache at once would send every parent to linking together.
                del self._entries[next(iter(self._entries))]
            if self.max_entries > 0:
                # Up to a fifth shorter at random, so that entries made together expire apart.
                self._entries[parent_id] = (now + self.ttl * (1 - 0.2 * random.random()), pupils)  # noqa: S311 - jitter, not a secret
        return pupils


def get_links_cache(state: State) -> LinksCache:
    """The replica's links cache."""
    return state[STATE_KEY]
