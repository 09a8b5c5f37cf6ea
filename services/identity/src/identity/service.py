"""What identity does: registration, verification, login, sessions, password reset, staff."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from sqlalchemy import CursorResult, Result, Row, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import identity as c
from contracts import notify
from contracts.addresses import looks_like_email, normalise_email
from contracts.base import Event, utcnow
from contracts.kit.gather import ReadGatherer
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from contracts.kit.rpc import RpcFailure, field_errors
from contracts.kit.runtime import ServiceRuntime
from contracts.platform import StaffUpserted
from identity.passwords import Passwords, WeakPassword, check_policy
from identity.tables import Account, LoginFailure, Session, Token

if TYPE_CHECKING:
    from identity.app import Settings

# A session's columns with its account's, read by name. They are more than the typed overloads
# of SQLAlchemy's select() take, so the row's values are not typed one by one.
SessionRow: TypeAlias = "Row[*tuple[Any, ...]]"

log = get_logger("identity.service")

VERIFY = "verify"
RESET = "reset"


def digest(value: str) -> str:
    """SHA-256 hex of a token: tokens have 256 random bits, so no salt or stretching is needed."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_token() -> str:
    """A token of 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def _too_many(retry_after: float) -> RpcFailure:
    seconds = max(1, int(retry_after + 0.999))
    return RpcFailure(c.E_TOO_MANY, f"Too many attempts; retry after {seconds} s", retry_after=seconds)


class IdentityService:
    """The verbs of identity, each in its own transaction."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings, passwords: Passwords) -> None:
        self.runtime = runtime
        self.s = settings
        self.passwords = passwords
        # Sessions used since the last flush, written together: a morning's first visits
        # would otherwise each be a write transaction.
        self._used: set[str] = set()
        # Session lookups of concurrent requests, read in one query.
        self._sessions: ReadGatherer[SessionRow] = ReadGatherer(self._read_sessions)
        self._background: list[asyncio.Task[None]] = []
        self._policy_checks = asyncio.Semaphore(2)

    # -- helpers ------------------------------------------------------------------------------

    def _url(self, path: str, token: str) -> str:
        return f"{self.s.public_url}{path}?token={token}"

    async def _issue_token(
        self, uow: UnitOfWork, account: Account, purpose: str, lifetime: timedelta
    ) -> tuple[str, datetime]:
        token, now = new_token(), utcnow()
        uow.session.add(
            Token(
                account_id=account.id,
                purpose=purpose,
                token_hash=digest(token),
                expires_at=now + lifetime,
                created_at=now,
            )
        )
        return token, now + lifetime

    async def _send_verification(self, uow: UnitOfWork, account: Account) -> None:
        token, expires = await self._issue_token(uow, account, VERIFY, timedelta(hours=self.s.identity_verify_hours))
        await self._email(
            uow,
            notify.VerificationEmail(
                to=account.email, to_name=account.name, verify_url=self._url("/verify", token), expires_at=expires
            ),
        )

    async def _email(self, uow: UnitOfWork, request: notify.EmailRequest) -> None:
        # Through the outbox: no account change without its email, and no email without it.
        await uow.emit(notify.request_subject(request.kind), request, aggregate=f"email:{request.event_id}")

    async def _check_password(self, password: str, *, email: str, name: str) -> None:
        # 15-60 ms of CPU a check: in a thread, a few at a time, so that a flood of
        # registrations cannot hold up the session lookups every page view makes.
        try:
            async with self._policy_checks:
                await asyncio.to_thread(check_policy, password, email=email, name=name)
        except WeakPassword as exc:
            raise RpcFailure(exc.code, str(exc), fields=field_errors(password=str(exc))) from exc

    @staticmethod
    def _check_email(email: str) -> str:
        email = email.strip()
        if not looks_like_email(email):
            message = "Enter an email address like name@example.org."
            raise RpcFailure(c.E_VALIDATION, message, fields=field_errors(email=message))
        return email

    async def _account_by_email(self, uow_or_session: UnitOfWork | AsyncSession, email: str) -> Account | None:
        session = uow_or_session.session if isinstance(uow_or_session, UnitOfWork) else uow_or_session
        return (
            await session.execute(select(Account).where(col(Account.email_key) == normalise_email(email)))
        ).scalar_one_or_none()

    async def _revoke_all(self, uow: UnitOfWork, account_id: str, now: datetime) -> list[str]:
        ids = list(
            (
                await uow.session.execute(
                    select(col(Session.id)).where(
                        col(Session.account_id) == account_id, col(Session.revoked_at).is_(None)
                    )
                )
            ).scalars()
        )
        if ids:
            await uow.session.execute(update(Session).where(col(Session.id).in_(ids)).values(revoked_at=now))
        await uow.emit(
            c.SESSION_REVOKED,
            c.SessionRevoked(account_id=account_id, session_ids=ids, all_sessions=True),
            aggregate=f"account:{account_id}",
        )
        return ids

    # -- parents -----------------------------------------------------------------------------

    async def register(self, req: c.RegisterRequest) -> c.RegisterReply:
        """Create an unverified parent and email a verification link; a known address gets an
        email instead, and the same answer."""
        email = self._check_email(req.email)
        name = req.name.strip()
        if not name:
            raise RpcFailure(c.E_VALIDATION, "Enter your name.", fields=field_errors(name="Enter your name."))
        await self._check_password(req.password, email=email, name=name)
        password_hash = await self.passwords.hash(req.password)
        now = utcnow()
        for _ in range(2):
            try:
                async with self.runtime.unit_of_work() as uow:
                    existing = await self._account_by_email(uow, email)
                    if existing is not None:
                        await self._known_address(uow, existing)
                        log.info("register_known_address", account_id=existing.id)
                        return c.RegisterReply(
                            parent_id=existing.id, created=False, verified=existing.verified_at is not None
                        )
                    account = Account(
                        id=uuid.uuid4().hex,
                        role="parent",
                        email=email,
                        email_key=normalise_email(email),
                        name=name,
                        password_hash=password_hash,
                        aup_version=req.aup_version or None,
                        aup_accepted_at=now if req.aup_version else None,
                        password_changed_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                    uow.session.add(account)
                    await uow.session.flush()
                    await uow.emit(
                        c.PARENT_REGISTERED, c.ParentRegistered(parent_id=account.id), aggregate=f"account:{account.id}"
                    )
                    await self._send_verification(uow, account)
                log.info("parent_registered", account_id=account.id)
                return c.RegisterReply(parent_id=account.id, created=True, verified=False)
            except IntegrityError:
                continue  # the same address registered at the same moment: answer as known
        raise RpcFailure(c.E_CONFLICT, "Please try again.")

    async def _known_address(self, uow: UnitOfWork, account: Account) -> None:
        if account.role == "parent" and account.verified_at is None:
            # They registered before and lost the email: a fresh link helps more than "you
            # already have an account" would. The stored password stays as it was.
            if await self._verification_budget_left(uow, account):
                await self._send_verification(uow, account)
            return
        await self._email(
            uow,
            notify.AccountExistsEmail(
                to=account.email,
                to_name=account.name,
                login_url=f"{self.s.public_url}/login",
                reset_url=f"{self.s.public_url}/reset-password",
            ),
        )

    async def _verification_budget_left(self, uow: UnitOfWork, account: Account) -> bool:
        now = utcnow()
        recent = (
            await uow.session.execute(
                select(func.count(), func.max(col(Token.created_at))).where(
                    col(Token.account_id) == account.id,
                    col(Token.purpose) == VERIFY,
                    col(Token.created_at) >= now - timedelta(days=1),
                )
            )
        ).one()
        count, last = recent
        if count >= self.s.identity_verification_emails_per_day:
            return False
        return last is None or now - last >= timedelta(seconds=self.s.identity_resend_interval_seconds)

    async def verify(self, req: c.VerifyRequest) -> c.VerifyReply:
        """Use a verification token: the parent's address is verified."""
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            token = await self._use_token(uow, req.token, VERIFY, now)
            account = await uow.session.get(Account, token.account_id)
            assert account is not None  # a token's account_id is a foreign key
            if account.verified_at is None:
                account.verified_at = now
                account.updated_at = now
                await uow.emit(
                    c.PARENT_VERIFIED, c.ParentVerified(parent_id=account.id), aggregate=f"account:{account.id}"
                )
        log.info("parent_verified", account_id=account.id)
        return c.VerifyReply(parent_id=account.id)

    async def _use_token(self, uow: UnitOfWork, raw: str, purpose: str, now: datetime) -> Token:
        token = (
            await uow.session.execute(
                select(Token).where(col(Token.token_hash) == digest(raw.strip()), col(Token.purpose) == purpose)
            )
        ).scalar_one_or_none()
        if token is None or token.used_at is not None or token.expires_at <= now:
            raise RpcFailure(c.E_INVALID_TOKEN, "This link is not valid: it is unknown, expired, or already used.")
        # Single use even under a race: only the transaction that flips used_at succeeds.
        # An UPDATE's result is a CursorResult, which has the rowcount.
        result = cast(
            "CursorResult[Any]",
            await uow.session.execute(
                update(Token).where(col(Token.id) == token.id, col(Token.used_at).is_(None)).values(used_at=now)
            ),
        )
        if result.rowcount != 1:
            raise RpcFailure(c.E_INVALID_TOKEN, "This link is not valid: it is unknown, expired, or already used.")
        return token

    async def resend_verification(self, req: c.EmailRequest) -> c.Accepted:
        """Send a fresh verification link to an unverified parent (rate-limited, silent otherwise)."""
        async with self.runtime.unit_of_work() as uow:
            account = await self._account_by_email(uow, req.email)
            if (
                account is not None
                and account.role == "parent"
                and account.verified_at is None
                and await self._verification_budget_left(uow, account)
            ):
                await self._send_verification(uow, account)
                log.info("verification_resent", account_id=account.id)
        return c.Accepted()

    # -- login and sessions -----------------------------------------------------------------

    def _failure_keys(self, email: str, client_ip: str) -> tuple[str, str | None]:
        account_key = "a:" + digest(normalise_email(email))[:40]
        ip_key = "ip:" + digest("ip:" + client_ip)[:40] if client_ip else None
        return account_key, ip_key

    async def _failures(
        self, session: AsyncSession, key: str, window: timedelta, now: datetime
    ) -> tuple[int, datetime | None]:
        count, oldest = (
            await session.execute(
                select(func.count(), func.min(col(LoginFailure.at))).where(
                    col(LoginFailure.key) == key, col(LoginFailure.at) > now - window
                )
            )
        ).one()
        return count, oldest

    async def login(self, req: c.LoginRequest) -> c.LoginReply:
        """Check the password and open a session, within the guessing limits."""
        now = utcnow()
        account_key, ip_key = self._failure_keys(req.email, req.client_ip)
        account_window = timedelta(minutes=self.s.identity_account_failure_window_minutes)
        ip_window = timedelta(hours=1)
        async with self.runtime.db.reader() as s:
            count, oldest = await self._failures(s, account_key, account_window, now)
            account = await self._account_by_email(s, req.email)
        if count >= self.s.identity_account_failure_limit:
            # Refused before the password is even checked: guessing gains nothing here.
            log.info("login_refused_account_limit", account_id=account.id if account else None)
            assert oldest is not None  # there are failures in the window
            raise _too_many((oldest + account_window - now).total_seconds())

        ok = await self.passwords.verify(account.password_hash if account else None, req.password)
        if not ok:
            async with self.runtime.db.session() as s:
                s.add(LoginFailure(key=account_key, at=now))
                if ip_key:
                    s.add(LoginFailure(key=ip_key, at=now))
            log.info("login_failed", account_id=account.id if account else None)
            if ip_key:
                async with self.runtime.db.reader() as s:
                    ip_count, ip_oldest = await self._failures(s, ip_key, ip_window, now)
                # Only failures are limited per address: a school hall shares one.
                if ip_count > self.s.identity_ip_failure_limit:
                    assert ip_oldest is not None  # there are failures in the window
                    raise _too_many((ip_oldest + ip_window - now).total_seconds())
            raise RpcFailure(c.E_INVALID_CREDENTIALS, "The email address or password is not right.")
        assert account is not None and account.password_hash is not None  # verify() matches stored hashes only

        if account.role == "parent" and account.verified_at is None:
            log.info("login_unverified", account_id=account.id)
            raise RpcFailure(c.E_NOT_VERIFIED, "Confirm your email address first: use the link we emailed you.")

        token = new_token()
        idle = self._idle_seconds(account.role)
        absolute = self._absolute_seconds(account.role)
        session_id = uuid.uuid4().hex
        rehash = self.passwords.needs_rehash(account.password_hash)
        new_hash = await self.passwords.hash(req.password) if rehash else None
        async with self.runtime.db.session() as s:
            s.add(
                Session(
                    id=session_id,
                    account_id=account.id,
                    token_hash=digest(token),
                    created_at=now,
                    last_seen_at=now,
                    idle_seconds=idle,
                    absolute_expires_at=now + timedelta(seconds=absolute),
                )
            )
            await s.execute(delete(LoginFailure).where(col(LoginFailure.key) == account_key))
            if new_hash:
                await s.execute(update(Account).where(col(Account.id) == account.id).values(password_hash=new_hash))
        log.info("login_succeeded", account_id=account.id, session_id=session_id, rehashed=bool(new_hash))
        return c.LoginReply(
            access_token=token,
            expires_in=min(idle, absolute),
            role=account.role,
            account_id=account.id,
            session_id=session_id,
        )

    def _idle_seconds(self, role: str) -> int:
        minutes = self.s.identity_parent_idle_minutes if role == "parent" else self.s.identity_staff_idle_minutes
        return int(minutes * 60)

    def _absolute_seconds(self, role: str) -> int:
        hours = self.s.identity_parent_absolute_hours if role == "parent" else self.s.identity_staff_absolute_hours
        return int(hours * 3600)

    async def session(self, req: c.SessionRequest) -> c.Principal:
        """Who holds this token, if the session is live; each use extends its idle lifetime."""
        now = utcnow()
        row = await self._sessions.one(digest(req.token))
        if row is None:
            raise RpcFailure(c.E_INVALID_SESSION, "Not signed in.")
        idle_end = row.last_seen_at + timedelta(seconds=row.idle_seconds)
        if row.revoked_at is not None or now >= row.absolute_expires_at or now >= idle_end:
            raise RpcFailure(c.E_INVALID_SESSION, "The session has ended: sign in again.")
        if (now - row.last_seen_at).total_seconds() >= self.s.identity_touch_seconds:
            self._used.add(row.id)
            idle_end = now + timedelta(seconds=row.idle_seconds)
        remaining = min(idle_end, row.absolute_expires_at) - now
        return c.Principal(
            account_id=row.account_id,
            session_id=row.id,
            role=row.role,
            email=row.email,
            name=row.name,
            school_id=row.school_id,
            trust_id=row.trust_id,
            expires_in=max(0, int(remaining.total_seconds())),
        )

    async def _read_sessions(self, token_hashes: list[str]) -> dict[str, SessionRow]:
        """The live-or-not session rows of these token hashes, with their accounts."""
        async with self.runtime.db.reader() as s:
            # Columns, not entities: every cache miss of every gateway comes here.
            rows: Result[*tuple[Any, ...]] = await s.execute(
                select(
                    col(Session.token_hash),
                    col(Session.id),
                    col(Session.last_seen_at),
                    col(Session.idle_seconds),
                    col(Session.revoked_at),
                    col(Session.absolute_expires_at),
                    col(Account.id).label("account_id"),
                    col(Account.role),
                    col(Account.email),
                    col(Account.name),
                    col(Account.school_id),
                    col(Account.trust_id),
                )
                .join(Account, col(Account.id) == col(Session.account_id))
                .where(col(Session.token_hash).in_(token_hashes))
            )
            return {row.token_hash: row for row in rows}

    async def record_use(self) -> None:
        """Write when the sessions used lately were last seen (every second or so, and at shutdown)."""
        if not self._used:
            return
        used, self._used = self._used, set()
        # One instant for the lot: at most a flush interval later than each real use, which
        # only lengthens an idle lifetime of days by a second. A crash loses a second of uses,
        # which shortens it by as little.
        now = utcnow()
        ids = sorted(used)
        try:
            async with self.runtime.db.session() as s:
                for i in range(0, len(ids), 500):
                    await s.execute(
                        update(Session).where(col(Session.id).in_(ids[i : i + 500])).values(last_seen_at=now)
                    )
        except Exception:
            self._used |= used  # tried again at the next flush
            raise

    async def logout(self, req: c.LogoutRequest) -> c.Accepted:
        """End the session of this token (every gateway hears of it at once)."""
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            sess = (
                await uow.session.execute(select(Session).where(col(Session.token_hash) == digest(req.token)))
            ).scalar_one_or_none()
            if sess is None or sess.revoked_at is not None:
                return c.Accepted()
            sess.revoked_at = now
            await uow.emit(
                c.SESSION_REVOKED,
                c.SessionRevoked(account_id=sess.account_id, session_ids=[sess.id]),
                aggregate=f"account:{sess.account_id}",
            )
        log.info("logout", account_id=sess.account_id, session_id=sess.id)
        return c.Accepted()

    # -- passwords --------------------------------------------------------------------------

    async def password_reset(self, req: c.EmailRequest) -> c.Accepted:
        """Email a reset link if the address has an account; the answer is the same either way."""
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            account = await self._account_by_email(uow, req.email)
            if account is None:
                return c.Accepted()
            recent = (
                await uow.session.execute(
                    select(func.count()).where(
                        col(Token.account_id) == account.id,
                        col(Token.purpose) == RESET,
                        col(Token.created_at) >= now - timedelta(hours=1),
                    )
                )
            ).scalar_one()
            if recent >= self.s.identity_reset_emails_per_hour:
                log.info("password_reset_rate_limited", account_id=account.id)
                return c.Accepted()
            token, expires = await self._issue_token(
                uow, account, RESET, timedelta(minutes=self.s.identity_reset_minutes)
            )
            await self._email(
                uow,
                notify.PasswordResetEmail(
                    to=account.email,
                    to_name=account.name,
                    reset_url=self._url("/reset-password", token),
                    expires_at=expires,
                ),
            )
        log.info("password_reset_sent", account_id=account.id)
        return c.Accepted()

    async def password_reset_confirm(self, req: c.PasswordResetConfirm) -> c.PasswordChangedReply:
        """Set a new password with a reset token; every session of the account ends."""
        now = utcnow()
        async with self.runtime.db.reader() as s:
            token = (
                await s.execute(
                    select(Token).where(col(Token.token_hash) == digest(req.token.strip()), col(Token.purpose) == RESET)
                )
            ).scalar_one_or_none()
            account = await s.get(Account, token.account_id) if token else None
        if token is None or token.used_at is not None or token.expires_at <= now:
            raise RpcFailure(c.E_INVALID_TOKEN, "This link is not valid: it is unknown, expired, or already used.")
        assert account is not None  # a token's account_id is a foreign key
        await self._check_password(req.password, email=account.email, name=account.name)
        new_hash = await self.passwords.hash(req.password)
        async with self.runtime.unit_of_work() as uow:
            await self._use_token(uow, req.token, RESET, now)
            account = await uow.session.get(Account, account.id)
            assert account is not None  # accounts are never deleted
            account.password_hash = new_hash
            account.password_changed_at = now
            account.updated_at = now
            if account.role == "parent" and account.verified_at is None:
                # The link reached their inbox: that proves the address as well.
                account.verified_at = now
                await uow.emit(
                    c.PARENT_VERIFIED, c.ParentVerified(parent_id=account.id), aggregate=f"account:{account.id}"
                )
            await self._revoke_all(uow, account.id, now)
            await uow.emit(
                c.PASSWORD_CHANGED, c.PasswordChanged(account_id=account.id), aggregate=f"account:{account.id}"
            )
            await self._email(
                uow,
                notify.PasswordChangedEmail(
                    to=account.email, to_name=account.name, reset_url=f"{self.s.public_url}/reset-password"
                ),
            )
        log.info("password_changed", account_id=account.id)
        return c.PasswordChangedReply(account_id=account.id)

    async def check_password(self, req: c.CheckPasswordRequest) -> c.Accepted:
        """Raise `weak_password` unless the password would be accepted."""
        await self._check_password(req.password, email=req.email, name=req.name)
        return c.Accepted()

    # -- staff and contacts ------------------------------------------------------------------

    async def upsert_staff(
        self,
        uow: UnitOfWork,
        *,
        staff_id: str | None,
        email: str,
        name: str,
        role: str,
        school_id: str | None,
        trust_id: str | None,
        password_hash: str | None,
    ) -> tuple[Account | None, bool]:
        """Create or update a member of staff; new ones without a password get a set-password link."""
        now = utcnow()
        account = None
        if staff_id:
            account = (
                await uow.session.execute(select(Account).where(col(Account.staff_id) == staff_id))
            ).scalar_one_or_none()
        by_email = await self._account_by_email(uow, email)
        if account is None:
            account = by_email
        elif by_email is not None and by_email.id != account.id:
            log.warning("staff_email_taken", account_id=account.id, other_account_id=by_email.id)
            return None, False
        if account is not None and account.role == "parent":
            # One address, one account: a parent's account does not silently become staff.
            log.warning("staff_email_is_a_parent", account_id=account.id)
            return None, False
        created = account is None
        if account is None:
            account = Account(
                id=uuid.uuid4().hex, created_at=now, updated_at=now, role=role, email=email, email_key="", name=name
            )
        before = None if created else (account.role, account.email, account.name, account.school_id, account.trust_id)
        account.role, account.email, account.email_key, account.name = role, email, normalise_email(email), name
        account.school_id, account.trust_id = (None, trust_id) if role == "trust_admin" else (school_id, None)
        if before is not None and before != (
            account.role,
            account.email,
            account.name,
            account.school_id,
            account.trust_id,
        ):
            # Gateways cache sessions for minutes: a member of staff moved to another school
            # must not keep the old one's pupils that long.
            await uow.emit(
                c.ACCOUNT_CHANGED, c.AccountChanged(account_id=account.id), aggregate=f"account:{account.id}"
            )
        account.staff_id = staff_id or account.staff_id
        account.verified_at = account.verified_at or now  # the school vouches for staff addresses
        account.updated_at = now
        if password_hash:
            account.password_hash, account.password_changed_at = password_hash, now
        uow.session.add(account)
        await uow.session.flush()
        if created and not password_hash:
            token, expires = await self._issue_token(
                uow, account, RESET, timedelta(hours=self.s.identity_set_password_hours)
            )
            await self._email(
                uow,
                notify.SetPasswordEmail(
                    to=account.email,
                    to_name=account.name,
                    reset_url=self._url("/reset-password", token),
                    expires_at=expires,
                ),
            )
        return account, created

    async def on_staff_upserted(self, uow: UnitOfWork, event: Event, subject: str) -> None:
        """The platform's roster names a member of staff."""
        assert isinstance(event, StaffUpserted)  # the consumer's only schema
        account, created = await self.upsert_staff(
            uow,
            staff_id=event.staff_id,
            email=event.email.strip(),
            name=event.name,
            role=event.role,
            school_id=event.school_id,
            trust_id=event.trust_id,
            password_hash=None,
        )
        if account is not None:
            log.info("staff_upserted", account_id=account.id, created=created, role=event.role)

    async def create_staff(self, req: c.CreateStaffRequest) -> c.CreateStaffReply:
        """`portal staff add`: one member of staff, with a password or a set-password email."""
        email = self._check_email(req.email)
        if req.role == "trust_admin" and not req.trust_id:
            raise RpcFailure(c.E_VALIDATION, "A trust admin needs --trust.", fields=field_errors(trust_id="required"))
        if req.role != "trust_admin" and not req.school_id:
            raise RpcFailure(
                c.E_VALIDATION, "A teacher or school admin needs --school.", fields=field_errors(school_id="required")
            )
        password_hash = None
        if req.password is not None:
            await self._check_password(req.password, email=email, name=req.name)
            password_hash = await self.passwords.hash(req.password)
        async with self.runtime.unit_of_work() as uow:
            account, created = await self.upsert_staff(
                uow,
                staff_id=None,
                email=email,
                name=req.name.strip(),
                role=req.role,
                school_id=req.school_id,
                trust_id=req.trust_id,
                password_hash=password_hash,
            )
        if account is None:
            raise RpcFailure(c.E_CONFLICT, "That email address already belongs to another account.")
        return c.CreateStaffReply(account_id=account.id, created=created)

    async def contacts(self, req: c.ContactsRequest) -> c.ContactsReply:
        """Names and addresses of the given accounts."""
        if not req.ids:
            return c.ContactsReply(contacts=[])
        async with self.runtime.db.reader() as s:
            rows = (await s.execute(select(Account).where(col(Account.id).in_(req.ids)))).scalars().all()
        return c.ContactsReply(contacts=[c.Contact(id=a.id, email=a.email, name=a.name) for a in rows])

    async def start_background(self) -> None:
        """Start the periodic work: pruning old login failures, recording session uses."""
        self._background = [asyncio.create_task(self._prune_forever()), asyncio.create_task(self._record_use_forever())]

    async def stop_background(self) -> None:
        """Stop the periodic work; the last session uses are recorded."""
        for task in self._background:
            task.cancel()
        self._background = []
        with contextlib.suppress(Exception):
            await self.record_use()

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(600)
            with contextlib.suppress(Exception):
                await self.prune()

    async def _record_use_forever(self) -> None:
        while True:
            await asyncio.sleep(1)
            try:
                await self.record_use()
            except Exception as exc:  # noqa: BLE001 - the database may be back at the next flush
                log.warning("session_use_not_recorded", error=type(exc).__name__)

    async def prune(self) -> None:
        """Forget login failures older than every window that counts them."""
        async with self.runtime.db.session() as s:
            await s.execute(delete(LoginFailure).where(col(LoginFailure.at) < utcnow() - timedelta(hours=2)))
