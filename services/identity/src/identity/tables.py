"""The identity service's own tables. No other part reads them."""

from datetime import datetime

from sqlalchemy import Column, Index, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from contracts.kit.db import UtcDateTime

# A registry of its own keeps these tables out of other services' metadata when several
# services are imported into one process (tests, the local runner).
_registry = registry()


class Base(SQLModel, registry=_registry):
    """Base of every identity table."""


metadata = _registry.metadata


def _ts(nullable: bool = False) -> Column:
    return Column(UtcDateTime(), nullable=nullable)


class Account(Base, table=True):
    """A parent or a member of staff; the only home of their name and email address."""

    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("email_key", name="uq_accounts_email_key"),
        UniqueConstraint("staff_id", name="uq_accounts_staff_id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=20)  # parent, teacher, school_admin, trust_admin
    email: str = Field(max_length=254)
    email_key: str = Field(max_length=254)  # lower-cased: addresses compare case-insensitively
    name: str = Field(max_length=200)
    password_hash: str | None = Field(default=None, max_length=255)
    verified_at: datetime | None = Field(default=None, sa_column=_ts(True))
    school_id: str | None = Field(default=None, max_length=64)
    trust_id: str | None = Field(default=None, max_length=64)
    staff_id: str | None = Field(default=None, max_length=64)  # the platform's id of a member of staff
    aup_version: str | None = Field(default=None, max_length=64)
    aup_accepted_at: datetime | None = Field(default=None, sa_column=_ts(True))
    password_changed_at: datetime | None = Field(default=None, sa_column=_ts(True))
    created_at: datetime = Field(sa_column=_ts())
    updated_at: datetime = Field(sa_column=_ts())
    # A disabled member of staff keeps their password (enabling them gives it back) but cannot
    # sign in, has no session, and gets no reset email.
    disabled_at: datetime | None = Field(default=None, sa_column=_ts(True))
    # The parent's choices: how often the digest email comes (weekly, daily, off) and the
    # language of their pages and emails (en, cy).
    digest: str = Field(default="weekly", max_length=10)
    language: str = Field(default="en", max_length=8)
    # When disabling or enabling was last decided (by an operator, an admin or a roster event):
    # a roster event that happened before it does not undo it.
    access_changed_at: datetime | None = Field(default=None, sa_column=_ts(True))
    # The last successful sign-in: sessions are erased some days after they end, and "never
    # signed in" must not count a parent whose sessions are gone.
    last_signed_in_at: datetime | None = Field(default=None, sa_column=_ts(True))


class Token(Base, table=True):
    """A single-use token from an email (verification, password reset), stored as a hash."""

    __tablename__ = "tokens"
    __table_args__ = (
        UniqueConstraint("token_hash", name="uq_tokens_hash"),
        Index("ix_tokens_account_purpose", "account_id", "purpose", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: str = Field(max_length=64, foreign_key="accounts.id")
    purpose: str = Field(max_length=20)  # verify, reset
    token_hash: str = Field(max_length=64)
    expires_at: datetime = Field(sa_column=_ts())
    used_at: datetime | None = Field(default=None, sa_column=_ts(True))
    created_at: datetime = Field(sa_column=_ts())


class Session(Base, table=True):
    """A signed-in session; the token itself is never stored."""

    __tablename__ = "sessions"
    __table_args__ = (
        UniqueConstraint("token_hash", name="uq_sessions_hash"),
        # With the last use: whether accounts were seen since a day is read from the index.
        Index("ix_sessions_account_seen", "account_id", "last_seen_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    account_id: str = Field(max_length=64, foreign_key="accounts.id")
    token_hash: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=_ts())
    last_seen_at: datetime = Field(sa_column=_ts())
    idle_seconds: int
    absolute_expires_at: datetime = Field(sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(True))


class LoginFailure(Base, table=True):
    """One failed login (or one being checked), counted per account and client address and per
    client address for the guessing limits."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=80)  # "a:<account hash>:<address hash>" or "ip:<address hash>"
    at: datetime = Field(sa_column=_ts())


class RateEvent(Base, table=True):
    """One counted event of the other limits: a registration email to an address, a reset
    email to an address, a failed registration from a client address."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_key_at", "key", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=80)  # "<kind>:<hash of the address>"
    at: datetime = Field(sa_column=_ts())
