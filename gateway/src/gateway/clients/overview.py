"""Overview as the gateway asks it (`contracts.overview`)."""

from __future__ import annotations

from typing import Any

from contracts import overview
from contracts.base import Message, Rpc
from gateway.clients.transport import Transport


class OverviewClient:
    """Children's homework, messages and stars, many pupils per request."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def get(self, pupil_ids: list[str], *, timeout: float | None = None) -> overview.OverviewReply:
        """These pupils' overviews, parsed."""
        return await self._t.call(overview.GET, overview.OverviewRequest(pupil_ids=pupil_ids), timeout=timeout)

    async def get_raw(self, pupil_ids: list[str], *, timeout: float | None = None) -> bytes:
        """These pupils' overviews as overview's own JSON, `{"children": [...]}`."""
        # The hot path: the gateway caches and passes on each child's JSON as it came, so
        # nothing is parsed into models and serialised again.
        return await self._t.call_raw(overview.GET, overview.OverviewRequest(pupil_ids=pupil_ids), timeout=timeout)

    async def detail_raw(self, rpc: Rpc[Any, Any], request: Message, *, timeout: float | None = None) -> bytes:
        """One child's homework, messages, stars or handoff target, as overview's own JSON."""
        return await self._t.call_raw(rpc, request, timeout=timeout)
