"""What notify does with an email request: records it in the ledger, once per request id; the
sender (`notify.sender`) sends what the ledger holds."""

from __future__ import annotations

from contracts import notify as contract
from contracts.addresses import normalise_email
from contracts.base import Event, utcnow
from contracts.kit.db import insert
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from notify.sender import Sender
from notify.tables import PENDING, Email

log = get_logger("notify.handlers")


class Requests:
    """The email-request consumer's handler."""

    def __init__(self, sender: Sender | None) -> None:
        self.sender = sender

    async def record(self, uow: UnitOfWork, request: Event, subject: str) -> None:
        """Record one request (a redelivered one changes nothing) and wake the sender after commit."""
        assert isinstance(request, contract.EmailRequest)  # the consumer's schemas are email requests
        now = utcnow()
        stmt = insert(uow.session, Email).values(
            request_id=request.event_id,
            kind=request.kind,
            reference=request.reference,
            request=request.model_dump_json(),
            parent_id=request.parent_id,
            recipient=request.to,
            recipient_key=normalise_email(request.to) if request.to else None,
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        await uow.session.execute(stmt.on_conflict_do_nothing(index_elements=["request_id"]))
        log.info("email_requested", request_id=request.event_id, kind=request.kind)
        if self.sender is not None:
            uow.after_commit(self.sender.wake)
