"""The notify service's own tables. No other part reads them."""

from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import Column, Index, LargeBinary, SmallInteger, Table, Text, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from contracts.kit.db import UtcDateTime

# A registry of its own keeps these tables out of other services' metadata when several
# services are imported into one process (tests, the local runner).
_registry = registry()


class Base(SQLModel, registry=_registry):
    """Base of every notify table."""

    if TYPE_CHECKING:
        # SQLAlchemy sets it on every table model; SQLModel does not declare it.
        __table__: ClassVar[Table]


metadata = _registry.metadata

PENDING = "pending"  # waiting for its (next) attempt
SENDING = "sending"  # claimed by a sender; the server has not seen its final "." yet
DELIVERING = "delivering"  # its final "." may have been sent: never sent again
SENT = "sent"
# Which of the emails due goes first.
URGENT = 0  # a person asked for it, or something happened to their account: every email but...
BULK = 1  # ... the digest, which goes out to thousands at once and can wait its turn
FAILED = "failed"


class Email(Base, table=True):
    """One outbound email: the ledger entry that makes sending it happen once."""

    __tablename__ = "emails"
    __table_args__ = (
        UniqueConstraint("request_id", name="uq_emails_request"),
        Index("ix_emails_due", "status", "priority", "next_attempt_at"),
        Index("ix_emails_recipient_day", "recipient_key", "first_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(max_length=128)
    kind: str = Field(max_length=40)
    reference: str = Field(default="", max_length=200)
    request: str = Field(sa_column=Column(Text, nullable=False))
    parent_id: str | None = Field(default=None, max_length=128)
    recipient: str | None = Field(default=None, max_length=254)
    recipient_key: str | None = Field(default=None, max_length=254)
    message_id: str | None = Field(default=None, max_length=200)
    content: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    status: str = Field(default=PENDING, max_length=16)
    # URGENT (0) goes before BULK (1) whenever both are due: a parent waiting for a password
    # reset is not kept behind a Friday's 15,000 digests.
    priority: int = Field(default=0, sa_column=Column(SmallInteger, nullable=False, server_default="0"))
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    first_attempt_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime(), nullable=True))
    claimed_by: str | None = Field(default=None, max_length=64)
    claim_until: datetime | None = Field(default=None, sa_column=Column(UtcDateTime(), nullable=True))
    last_error: str | None = Field(default=None, max_length=300)
    smtp_code: int | None = None
    created_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime(), nullable=True))
    # The trace of the request that asked for it (tracing on): sending it continues that trace.
    traceparent: str | None = Field(default=None, max_length=64)
