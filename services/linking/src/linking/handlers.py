"""Linking's handlers: its parts, and what stands in front of them (the parent's guessing limit).

`app.serve_requests` answers each `rpc.linking.*` request with one handler of `Handlers`; the
consumers of `app.consume_events` call the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts import linking as contract
from contracts.base import Event
from contracts.kit.outbox import UnitOfWork
from linking import contacts, full_roster, roster
from linking.bars import Bars
from linking.context import LinkingContext
from linking.guessing import Guessing
from linking.links import Links
from linking.printed import PrintedCodes
from linking.schools import Schools


@dataclass(frozen=True)
class Handlers:
    """Every part of one linking replica (each made with the parts it uses, in `app.build`)."""

    ctx: LinkingContext
    guessing: Guessing
    bars: Bars
    links: Links
    printed: PrintedCodes
    schools: Schools

    async def redeem(self, req: contract.RedeemRequest) -> contract.RedeemReply:
        """Redeem a code, unless the parent reached their limit of wrong codes."""
        await self.guessing.check_parent(req.parent_id)
        return await self.links.redeem(req)

    async def preview_code(self, req: contract.PreviewCodeRequest) -> contract.CodePreview:
        """Say what a code is for, unless the parent reached their limit of wrong codes."""
        await self.guessing.check_parent(req.parent_id)
        return await self.printed.preview_code(req)

    async def apply_roster(self, uow: UnitOfWork, items: list[tuple[str, Event]]) -> None:
        """A batch of roster events; a pupil who left, or moved to another school, loses their
        links (those made at the school they left) in the same transaction."""
        await roster.apply_batch(
            uow, items, on_pupil_left=self.links.on_pupil_left, on_pupil_moved=self.links.on_pupil_moved
        )
        await contacts.apply(uow, items, self.ctx.addresses)
        await full_roster.apply_removals(uow, items)
