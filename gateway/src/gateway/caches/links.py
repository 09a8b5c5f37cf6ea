"""Which children a parent may see right now, remembered per replica.

Every overview request needs it, so it is kept in memory: an entry goes when linking says a
link of that parent changed (`linking.link.>` on core NATS; every replica hears it), when this
replica removes a link itself (at once, before it answers), after a short time in any case, and
all at once after a reconnect (events may have been missed meanwhile).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable

from litestar.datastructures import State
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from contracts import linking
from contracts.kit.logs import get_logger

log = get_logger("gateway.caches.links")

STATE_KEY = "links_cache"


class LinksCache:
    """parent id -> (expiry, the pupil ids of their standing, active links)."""

    def __init__(self, fetch: Callable[[str], Awaitable[list[str]]], ttl: float, max_entries: int = 200_000) -> None:
        self.fetch = fetch  # linking's answer for one parent (`LinkingClient.active_pupils`)
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, tuple[str, ...]]] = {}
        self.generation = 0

    async def subscribe(self, nc: NatsClient) -> None:
        """Listen for link changes (called once the NATS connection is up)."""
        await nc.subscribe(linking.LINK_ALL, cb=self._on_link_event)

    async def on_reconnect(self) -> None:
        """Forget everything: link events may have been missed while disconnected."""
        self.clear()

    async def _on_link_event(self, msg: Msg) -> None:
        try:
            parent_id = json.loads(msg.data)["parent_id"]
        except (ValueError, KeyError, TypeError):
            self.clear()
            return
        self.forget(parent_id)

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
