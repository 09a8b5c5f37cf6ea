"""What notify does with an email request: records it in the ledger, once per request id; the
sender (`notify.sender`) sends what the ledger holds."""

from __future__ import annotations

from sqlalchemy import and_, delete, or_, select
from sqlmodel import col

from contracts import identity
from contracts import notify as contract
from contracts.addresses import normalise_email
from contracts.base import Event, utcnow
from contracts.kit import tracing
from contracts.kit.db import Database, insert
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from contracts.kit.tables import processed_events
from notify.sender import Sender
from notify.tables import PENDING, Email

log = get_logger("notify.handlers")


class Requests:
    """The email-request consumer's handler."""

    def __init__(self, sender: Sender | None) -> None:
        self.sender = sender

    async def record(self, uow: UnitOfWork, request: Event, subject: str) -> None:
        """Record one request (a redelivered one changes nothing) and wake the sender after commit.
        A request about a parent whose account was deleted is dropped: it may have waited in
        the stream while notify was away, and must not bring their address back."""
        assert isinstance(request, contract.EmailRequest)  # the consumer's schemas are email requests
        now = utcnow()
        if request.parent_id and await is_erased(uow, request.parent_id):
            log.info("email_request_dropped_account_deleted", request_id=request.event_id, kind=request.kind)
            return
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
            traceparent=tracing.current_traceparent(),
        )
        await uow.session.execute(stmt.on_conflict_do_nothing(index_elements=["request_id"]))
        log.info("email_requested", request_id=request.event_id, kind=request.kind)
        if self.sender is not None:
            uow.after_commit(self.sender.wake)


# Parents whose account was deleted, kept as processed-event records of this name (the parent's
# id in place of an event id): ids only, and kept as long as any event could still arrive.
ERASED = "notify-erased-parent"


async def is_erased(uow: UnitOfWork, parent_id: str) -> bool:
    """Whether this parent's account was deleted."""
    found = await uow.session.execute(
        select(processed_events.c.event_id).where(
            processed_events.c.consumer == ERASED, processed_events.c.event_id == parent_id
        )
    )
    return found.first() is not None


class Erasure:
    """The account-deleted consumer's handler."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def on_account_deleted(self, uow: UnitOfWork, event: Event, subject: str) -> None:
        """A parent deleted their account: every email about them (by their id) and every email
        to an address those went to, sent or not, is deleted with its address and content; the
        parent's id is kept so that requests about them arriving later are dropped. An email
        being sent right now is sent; its sender finds the row gone and records nothing."""
        assert isinstance(event, identity.AccountDeleted)  # the consumer's only schema
        s = uow.session
        parent_id = event.account_id
        keys = set(
            (
                await s.execute(
                    select(col(Email.recipient_key)).where(
                        col(Email.parent_id) == parent_id, col(Email.recipient_key).is_not(None)
                    )
                )
            ).scalars()
        )
        # Emails tagged with another account's id are that account's (a later registration of
        # the address is a new account): only untagged ones to the addresses go with this one.
        about = or_(
            col(Email.parent_id) == parent_id,
            and_(col(Email.parent_id).is_(None), col(Email.recipient_key).in_(keys)),
        )
        result = await s.execute(delete(Email).where(about))
        await s.execute(
            insert(s, processed_events)
            .values(consumer=ERASED, event_id=parent_id, processed_at=utcnow())
            .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
        )
        uow.after_commit(self.db.scrub_soon)
        log.info("account_erased", parent_id=parent_id, emails_deleted=int(getattr(result, "rowcount", 0) or 0))
