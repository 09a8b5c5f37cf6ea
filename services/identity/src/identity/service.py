"""What identity does: registration, verification, login, sessions, password reset, staff."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from sqlalchemy import CursorResult, delete, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from contracts import identity as c
from contracts import names, notify
from contracts.addresses import looks_like_email, normalise_email
from contracts.base import Event, utcnow
from contracts.kit.db import dialect_name, utc
from contracts.kit.gather import ReadGatherer
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from contracts.kit.rpc import RpcFailure, field_errors
from contracts.kit.runtime import ServiceRuntime
from contracts.platform import StaffLeft, StaffUpserted
from identity.passwords import Passwords, PasswordsBusy, WeakPassword, check_policy
from identity.preferences import announce, preferences_of
from identity.tables import Account, LoginFailure, RateEvent, Session, Token

if TYPE_CHECKING:
    from identity.app import Settings


# A session's columns with its account's, read by name. They are more than the typed overloads
# of SQLAlchemy's select() take, so the row's values are not typed one by one.
class SessionRow(NamedTuple):
    """A session by its token's hash, with what its principal needs of the account."""

    token_hash: str
    id: str
    last_seen_at: datetime
    idle_seconds: int
    revoked_at: datetime | None
    absolute_expires_at: datetime
    account_id: str
    role: c.Role
    email: str
    name: str
    school_id: str | None
    trust_id: str | None
    disabled_at: datetime | None
    language: c.Language


def _session_row(r: Sequence[Any]) -> SessionRow:
    return SessionRow(
        token_hash=r[0],
        id=r[1],
        last_seen_at=cast(datetime, utc(r[2])),
        idle_seconds=r[3],
        revoked_at=utc(r[4]),
        absolute_expires_at=cast(datetime, utc(r[5])),
        account_id=r[6],
        role=r[7],
        email=r[8],
        name=r[9],
        school_id=r[10],
        trust_id=r[11],
        disabled_at=utc(r[12]),
        language=r[13],
    )


_SESSIONS_SQL = (
    "SELECT s.token_hash, s.id, s.last_seen_at, s.idle_seconds, s.revoked_at, s.absolute_expires_at,"
    " a.id, a.role, a.email, a.name, a.school_id, a.trust_id, a.disabled_at, a.language"
    " FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE s.token_hash IN {keys}"
)

log = get_logger("identity.service")

VERIFY = "verify"
RESET = "reset"

HOUR = timedelta(hours=1)
# When every argon2 slot stayed taken: long enough for the queue to drain.
BUSY_RETRY_AFTER = 5


def digest(value: str) -> str:
    """SHA-256 hex of a token: tokens have 256 random bits, so no salt or stretching is needed."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_token() -> str:
    """A token of 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def _too_many(retry_after: float) -> RpcFailure:
    seconds = max(1, int(retry_after + 0.999))
    return RpcFailure(c.E_TOO_MANY, f"Too many attempts; retry after {seconds} s", retry_after=seconds)


def _busy() -> RpcFailure:
    return RpcFailure(
        c.E_TOO_MANY,
        f"Many people are signing in right now; retry after {BUSY_RETRY_AFTER} s",
        retry_after=BUSY_RETRY_AFTER,
    )


def _hashed(kind: str, value: str) -> str:
    # Counters hold no addresses, only what tells one from another.
    return digest(f"{kind}:{value}")[:32]


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.sha256(b"identity limit " + key.encode()).digest()[:8], "big", signed=True)


async def _lock(session: AsyncSession, *keys: str) -> None:
    """Make transactions counting the same keys take turns, so that concurrent ones cannot all
    see room under a limit and all go past it. SQLite's writers take turns anyway (BEGIN
    IMMEDIATE); on PostgreSQL a transaction-scoped advisory lock per key, in one order."""
    if dialect_name(session) == "postgresql":
        for key in sorted(set(keys)):
            await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_id(key)})


async def _blocked_for(
    session: AsyncSession,
    table: type[LoginFailure] | type[RateEvent],
    key: str,
    limit: int,
    window: timedelta,
    now: datetime,
) -> float | None:
    """Seconds until `key` is under `limit` events in `window` again; None when it is now."""
    # While the limit-th newest event is inside the window the limit is reached; it ends when
    # that one leaves the window.
    at = (
        await session.execute(
            select(col(table.at))
            .where(col(table.key) == key, col(table.at) > now - window)
            .order_by(col(table.at).desc())
            .offset(limit - 1)
            .limit(1)
        )
    ).scalar_one_or_none()
    return None if at is None else max(1.0, (at + window - now).total_seconds())


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
        # No name: whoever registered typed it, and the address has not said it is theirs yet.
        await self._email(
            uow,
            notify.VerificationEmail(
                to=account.email,
                parent_id=self._parent_id(account),
                language=self._language(account),
                verify_url=self._url("/verify", token),
                expires_at=expires,
            ),
        )

    @staticmethod
    def _language(account: Account) -> c.Language:
        """The language of the account's emails: its preference."""
        return "cy" if account.language == "cy" else "en"

    @staticmethod
    def _parent_id(account: Account) -> str | None:
        """The account an email to a parent is about: notify erases it when the account is deleted."""
        return account.id if account.role == "parent" else None

    @staticmethod
    def _greeting(account: Account) -> str | None:
        """The name an email to this account may greet with: a verified account's own, never
        one typed by whoever registered an address that has not said it is theirs."""
        return account.name if account.verified_at is not None else None

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
    def _check_name(name: str) -> str:
        problem = names.problem_with_name(name)
        if problem is not None:
            raise RpcFailure(names.E_INVALID_NAME, problem, fields=field_errors(name=problem))
        return name.strip()

    async def _hash(self, password: str) -> str:
        try:
            return await self.passwords.hash(password)
        except PasswordsBusy:
            log.warning("password_hashing_busy")
            raise _busy() from None

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

    def _address_key(self, kind: str, email: str) -> str:
        return f"{kind}:{_hashed('email', normalise_email(email))}"

    async def register(self, req: c.RegisterRequest) -> c.RegisterReply:
        """Create an unverified parent and email a verification link; a verified address gets
        an email instead, and the same answer. Registering an address that is not verified yet
        starts again: the newest registration's password and name, and links, are the ones."""
        now = utcnow()
        async with self._refusals_counted(req.client_ip, now):
            email = self._check_email(req.email)
            name = self._check_name(req.name)
            await self._check_password(req.password, email=email, name=name)
        password_hash = await self._hash(req.password)
        for _ in range(3):
            try:
                async with self.runtime.unit_of_work() as uow:
                    # Registrations of one address take turns: its email budget and the
                    # replacing of an unverified registration are decided one at a time.
                    await _lock(uow.session, self._address_key("mail", email))
                    existing = (
                        await uow.session.execute(
                            select(Account).where(col(Account.email_key) == normalise_email(email)).with_for_update()
                        )
                    ).scalar_one_or_none()
                    if existing is not None and (existing.role != "parent" or existing.verified_at is not None):
                        await self._known_address(uow, existing, now)
                        log.info("register_known_address", account_id=existing.id)
                        return c.RegisterReply(parent_id=existing.id, created=False, verified=True)
                    replaced = None
                    if existing is not None:
                        replaced = existing.id
                        await self._forget_unverified(uow, existing)
                    account = Account(
                        id=uuid.uuid4().hex,
                        role="parent",
                        email=email,
                        email_key=normalise_email(email),
                        name=name,
                        password_hash=password_hash,
                        aup_version=req.aup_version or None,
                        aup_accepted_at=now if req.aup_version else None,
                        language=req.language or c.DEFAULT_LANGUAGE,
                        password_changed_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                    uow.session.add(account)
                    await uow.session.flush()
                    await uow.emit(
                        c.PARENT_REGISTERED, c.ParentRegistered(parent_id=account.id), aggregate=f"account:{account.id}"
                    )
                    if account.language != c.DEFAULT_LANGUAGE:
                        await announce(uow, account.id, preferences_of(account))
                    if await self._registration_email_allowed(uow.session, email, now):
                        await self._send_verification(uow, account)
                    else:
                        log.info("registration_email_rate_limited", account_id=account.id)
                log.info("parent_registered", account_id=account.id, replaced=replaced)
                return c.RegisterReply(parent_id=account.id, created=True, verified=False)
            except IntegrityError:
                continue  # the same address registered at the same moment: look again
        raise RpcFailure(c.E_CONFLICT, "Please try again.")

    @contextlib.asynccontextmanager
    async def _refusals_counted(self, client_ip: str, now: datetime) -> AsyncIterator[None]:
        """Refuse a client address with too many refused registrations (429), else count a
        refusal (an `RpcFailure`) raised inside the block against it."""
        if not client_ip:
            yield
            return
        key = f"reg:{_hashed('ip', client_ip)}"
        # Refused registrations cost a policy check each: an address that keeps sending them
        # waits. Successful ones are never counted (a school hall shares one address).
        async with self.runtime.db.reader() as s:
            blocked = await _blocked_for(s, RateEvent, key, self.s.identity_registration_failure_limit, HOUR, now)
        if blocked is not None:
            log.info("register_refused_client_limit")
            raise _too_many(blocked)
        try:
            yield
        except RpcFailure as refused:
            async with self.runtime.db.session() as s:
                s.add(RateEvent(key=key, at=now))
            log.info("register_refused", error=refused.code)
            raise

    async def _forget_unverified(self, uow: UnitOfWork, account: Account) -> None:
        """Remove a registration nobody confirmed, with its links' tokens: the earlier
        registrant's password never works, and the children their code held are never linked
        (linking holds them for an account id that is never verified)."""
        await uow.session.execute(delete(Token).where(col(Token.account_id) == account.id))
        await uow.session.execute(delete(Session).where(col(Session.account_id) == account.id))
        await uow.session.delete(account)
        await uow.session.flush()

    async def _registration_email_allowed(self, session: AsyncSession, email: str, now: datetime) -> bool:
        """Count one email about registration to `email` if its hourly budget has room (the
        caller holds the address's lock)."""
        key = self._address_key("mail", email)
        if await _blocked_for(session, RateEvent, key, self.s.identity_registration_emails_per_hour, HOUR, now):
            return False
        session.add(RateEvent(key=key, at=now))
        return True

    async def _known_address(self, uow: UnitOfWork, account: Account, now: datetime) -> None:
        if account.disabled_at is not None:
            # Its reset link would lead nowhere: a disabled account gets no reset email.
            log.info("account_exists_email_disabled", account_id=account.id)
            return
        if not await self._registration_email_allowed(uow.session, account.email, now):
            log.info("account_exists_email_rate_limited", account_id=account.id)
            return
        await self._email(
            uow,
            notify.AccountExistsEmail(
                to=account.email,
                parent_id=self._parent_id(account),
                language=self._language(account),
                to_name=self._greeting(account),
                login_url=f"{self.s.public_url}/login",
                reset_url=f"{self.s.public_url}/reset-password",
            ),
        )

    async def verify(self, req: c.VerifyRequest) -> c.VerifyReply:
        """Use a verification token: the parent's address is verified."""
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            token = await self._use_token(uow, req.token, VERIFY, now)
            account = await uow.session.get(Account, token.account_id)
            assert account is not None  # _use_token found it
            if account.verified_at is None:
                account.verified_at = now
                account.updated_at = now
                await uow.emit(
                    c.PARENT_VERIFIED, c.ParentVerified(parent_id=account.id), aggregate=f"account:{account.id}"
                )
        log.info("parent_verified", account_id=account.id)
        return c.VerifyReply(parent_id=account.id)

    async def _use_token(self, uow: UnitOfWork, raw: str, purpose: str, now: datetime) -> Token:
        invalid = RpcFailure(c.E_INVALID_TOKEN, "This link is not valid: it is unknown, expired, or already used.")
        token = (
            await uow.session.execute(
                select(Token).where(col(Token.token_hash) == digest(raw.strip()), col(Token.purpose) == purpose)
            )
        ).scalar_one_or_none()
        if token is None or token.used_at is not None or token.expires_at <= now:
            raise invalid
        # The account first, then its token, in the order a registration replacing it takes
        # them: one of the two waits for the other, and a replaced registration's link fails.
        locked = (
            await uow.session.execute(
                select(col(Account.id)).where(col(Account.id) == token.account_id).with_for_update()
            )
        ).scalar_one_or_none()
        if locked is None:
            raise invalid
        # Single use even under a race: only the transaction that flips used_at succeeds.
        # An UPDATE's result is a CursorResult, which has the rowcount.
        result = cast(
            "CursorResult[Any]",
            await uow.session.execute(
                update(Token).where(col(Token.id) == token.id, col(Token.used_at).is_(None)).values(used_at=now)
            ),
        )
        if result.rowcount != 1:
            raise invalid
        return token

    async def resend_verification(self, req: c.EmailRequest) -> c.Accepted:
        """Send a fresh verification link to an unverified parent, within the address's budget
        of registration emails (silent otherwise)."""
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            await _lock(uow.session, self._address_key("mail", req.email))
            account = await self._account_by_email(uow, req.email)
            if account is None or account.role != "parent" or account.verified_at is not None:
                return c.Accepted()
            key = self._address_key("mail", account.email)
            last = (
                await uow.session.execute(
                    select(col(RateEvent.at))
                    .where(col(RateEvent.key) == key)
                    .order_by(col(RateEvent.at).desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if last is not None and now - last < timedelta(seconds=self.s.identity_resend_interval_seconds):
                return c.Accepted()
            if not await self._registration_email_allowed(uow.session, account.email, now):
                log.info("verification_resend_rate_limited", account_id=account.id)
                return c.Accepted()
            await self._send_verification(uow, account)
        log.info("verification_resent", account_id=account.id)
        return c.Accepted()

    # -- login and sessions -----------------------------------------------------------------

    def _login_keys(self, email: str, client_ip: str) -> tuple[str, str | None]:
        """The counters of a login: this account from this address, and this address."""
        address = _hashed("ip", client_ip)
        pair_key = f"a:{_hashed('email', normalise_email(email))}:{address}"
        return pair_key, f"ip:{address}" if client_ip else None

    def _login_limits(self, pair_key: str, ip_key: str | None) -> list[tuple[str, int, timedelta]]:
        pair = (
            pair_key,
            self.s.identity_account_failure_limit,
            timedelta(minutes=self.s.identity_account_failure_window_minutes),
        )
        # Only failures are limited per address: a school hall shares one.
        return [(ip_key, self.s.identity_ip_failure_limit, HOUR), pair] if ip_key else [pair]

    async def _claim_attempt(self, limits: list[tuple[str, int, timedelta]], now: datetime) -> list[int]:
        """Count this login as a failure before its password is checked, unless a limit is
        reached (429): concurrent attempts cannot all pass a count none of them is in yet. A
        login that succeeds takes its rows back."""
        async with self.runtime.db.session() as s:
            await _lock(s, *(key for key, _, _ in limits))
            for key, limit, window in limits:
                blocked = await _blocked_for(s, LoginFailure, key, limit, window, now)
                if blocked is not None:
                    log.info("login_refused_limit", counter=key.split(":")[0])
                    raise _too_many(blocked)
            rows = [LoginFailure(key=key, at=now) for key, _, _ in limits]
            s.add_all(rows)
            await s.flush()
            return [row.id for row in rows if row.id is not None]

    async def _release_attempt(self, attempt: list[int], pair_key: str | None = None) -> None:
        """Take back a login's counted failure (and, after the right password, every failure of
        its account from its address)."""
        async with self.runtime.db.session() as s:
            where: ColumnElement[bool] = col(LoginFailure.id).in_(attempt)
            if pair_key is not None:
                where = or_(where, col(LoginFailure.key) == pair_key)
            await s.execute(delete(LoginFailure).where(where))

    async def login(self, req: c.LoginRequest) -> c.LoginReply:
        """Check the password and open a session, within the guessing limits.

        Failures are counted per account and client address (10 in 15 minutes make that
        address wait, for that account alone: nobody can lock someone else out from their own
        address) and per client address (100 in an hour, any accounts). Both are read before
        any password is hashed, so an address over its limit costs one read, and claimed
        atomically, so concurrent attempts cannot race past them.
        """
        now = utcnow()
        pair_key, ip_key = self._login_keys(req.email, req.client_ip)
        limits = self._login_limits(pair_key, ip_key)
        async with self.runtime.db.reader() as s:
            for key, limit, window in limits:
                blocked = await _blocked_for(s, LoginFailure, key, limit, window, now)
                if blocked is not None:
                    log.info("login_refused_limit", counter=key.split(":")[0])
                    raise _too_many(blocked)
            account = await self._account_by_email(s, req.email)
        attempt = await self._claim_attempt(limits, now)
        # A disabled account is checked against no hash at all: the same work, the same
        # answer and the same counted failure as a wrong password, whatever was typed.
        disabled = account is not None and account.disabled_at is not None
        stored = account.password_hash if account is not None and not disabled else None
        try:
            ok = await self.passwords.verify(stored, req.password)
        except PasswordsBusy:
            await self._release_attempt(attempt)
            log.warning("password_hashing_busy")
            raise _busy() from None
        if not ok:
            log.info("login_failed", account_id=account.id if account else None, disabled=disabled)
            raise RpcFailure(c.E_INVALID_CREDENTIALS, "The email address or password is not right.")
        assert account is not None and account.password_hash is not None  # verify() matches stored hashes only
        await self._release_attempt(attempt, pair_key)

        if account.role == "parent" and account.verified_at is None:
            log.info("login_unverified", account_id=account.id)
            raise RpcFailure(c.E_NOT_VERIFIED, "Confirm your email address first: use the link we emailed you.")

        token = new_token()
        idle = self._idle_seconds(account.role)
        absolute = self._absolute_seconds(account.role)
        session_id = uuid.uuid4().hex
        new_hash = None
        if self.passwords.needs_rehash(account.password_hash):
            with contextlib.suppress(PasswordsBusy):  # the next login rehashes it
                new_hash = await self.passwords.hash(req.password)
        async with self.runtime.db.session() as s:
            # Disabling may have committed while the password was checked: read the account
            # again in this transaction (its row locked, where the database has row locks), so
            # a session is either refused here or revoked by the disabling.
            disabled_now = (
                await s.execute(select(col(Account.disabled_at)).where(col(Account.id) == account.id).with_for_update())
            ).scalar_one_or_none()
            if disabled_now is not None:
                log.info("login_failed", account_id=account.id, disabled=True)
                raise RpcFailure(c.E_INVALID_CREDENTIALS, "The email address or password is not right.")
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
            changes: dict[str, object] = {"last_signed_in_at": now}
            if new_hash:
                changes["password_hash"] = new_hash
            await s.execute(update(Account).where(col(Account.id) == account.id).values(**changes))
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
        row = await self._sessions.one(digest(req.token))
        if row is None:
            raise RpcFailure(c.E_INVALID_SESSION, "Not signed in.")
        principal = self._principal(row, utcnow())
        if principal is None:
            raise RpcFailure(c.E_INVALID_SESSION, "The session has ended: sign in again.")
        return principal

    async def sessions(self, req: c.SessionsRequest) -> c.SessionsReply:
        """Who holds each token (None where it is no live session), read with whatever else is
        asked meanwhile; each use extends its session's idle lifetime."""
        keys = [digest(token) for token in req.tokens]
        rows = await self._sessions.get(keys)
        now = utcnow()
        return c.SessionsReply(
            sessions=[None if (row := rows[key]) is None else self._principal(row, now) for key in keys]
        )

    def _principal(self, row: SessionRow, now: datetime) -> c.Principal | None:
        """The principal of a session row, or None when the session has ended; a use worth
        recording is noted for the next touch."""
        idle_end = row.last_seen_at + timedelta(seconds=row.idle_seconds)
        if (
            row.revoked_at is not None
            or row.disabled_at is not None
            or now >= row.absolute_expires_at
            or now >= idle_end
        ):
            return None
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
            language=row.language,
        )

    async def _read_sessions(self, token_hashes: list[str]) -> dict[str, SessionRow]:
        """The live-or-not session rows of these token hashes, with their accounts."""
        # Every cache miss of every gateway comes here: one driver call (`read_keys`).
        rows = await self.runtime.db.read_keys(_SESSIONS_SQL, token_hashes)
        return {r[0]: _session_row(r) for r in rows}

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
            # Counted per address, not per account: a registration that replaces an
            # unverified account must not give the address a fresh budget.
            key = self._address_key("reset", req.email)
            await _lock(uow.session, key)
            account = await self._account_by_email(uow, req.email)
            if account is None:
                return c.Accepted()
            if account.disabled_at is not None:
                # A reset must not let a disabled member of staff back in: no link is sent.
                log.info("password_reset_disabled_account", account_id=account.id)
                return c.Accepted()
            if await _blocked_for(uow.session, RateEvent, key, self.s.identity_reset_emails_per_hour, HOUR, now):
                log.info("password_reset_rate_limited", account_id=account.id)
                return c.Accepted()
            uow.session.add(RateEvent(key=key, at=now))
            token, expires = await self._issue_token(
                uow, account, RESET, timedelta(minutes=self.s.identity_reset_minutes)
            )
            await self._email(
                uow,
                notify.PasswordResetEmail(
                    to=account.email,
                    parent_id=self._parent_id(account),
                    language=self._language(account),
                    to_name=self._greeting(account),
                    reset_url=self._url("/reset-password", token),
                    expires_at=expires,
                ),
            )
        log.info("password_reset_sent", account_id=account.id)
        return c.Accepted()

    async def password_reset_confirm(self, req: c.PasswordResetConfirm) -> c.PasswordChangedReply:
        """Set a new password with a reset token; every session of the account ends, and so do
        the limits its failed logins put on any address."""
        now = utcnow()
        async with self.runtime.db.reader() as s:
            token = (
                await s.execute(
                    select(Token).where(col(Token.token_hash) == digest(req.token.strip()), col(Token.purpose) == RESET)
                )
            ).scalar_one_or_none()
            account = await s.get(Account, token.account_id) if token else None
        if (
            token is None
            or account is None
            or account.disabled_at is not None
            or token.used_at is not None
            or token.expires_at <= now
        ):
            raise RpcFailure(c.E_INVALID_TOKEN, "This link is not valid: it is unknown, expired, or already used.")
        await self._check_password(req.password, email=account.email, name=account.name)
        new_hash = await self._hash(req.password)
        async with self.runtime.unit_of_work() as uow:
            await self._use_token(uow, req.token, RESET, now)
            account = await uow.session.get(Account, account.id)
            assert account is not None  # _use_token found it
            if account.disabled_at is not None:  # disabled since the read above
                raise RpcFailure(c.E_INVALID_TOKEN, "This link is not valid: it is unknown, expired, or already used.")
            greeting = self._greeting(account)  # before this link verifies the address
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
            # Whoever locked themselves out by mistyping, or was guessed at, starts afresh.
            prefix = f"a:{_hashed('email', account.email_key)}:"
            await uow.session.execute(delete(LoginFailure).where(col(LoginFailure.key).startswith(prefix)))
            await uow.emit(
                c.PASSWORD_CHANGED, c.PasswordChanged(account_id=account.id), aggregate=f"account:{account.id}"
            )
            await self._email(
                uow,
                notify.PasswordChangedEmail(
                    to=account.email,
                    parent_id=self._parent_id(account),
                    language=self._language(account),
                    to_name=greeting,
                    reset_url=f"{self.s.public_url}/reset-password",
                ),
            )
        log.info("password_changed", account_id=account.id)
        return c.PasswordChangedReply(account_id=account.id)

    async def check_password(self, req: c.CheckPasswordRequest) -> c.Accepted:
        """Raise `weak_password` unless the password would be accepted; with the caller's
        address, a refusal counts as a refused registration."""
        async with self._refusals_counted(req.client_ip, utcnow()):
            await self._check_password(req.password, email=req.email, name=req.name)
        return c.Accepted()

    # -- deleting an account -------------------------------------------------------------------

    async def delete_account(self, req: c.DeleteAccountRequest) -> c.AccountDeletedReply:
        """A parent deletes their own account with their password. A wrong password counts as a
        failed login of that account from that address (the same limits), and changes nothing."""
        now = utcnow()
        async with self.runtime.db.reader() as s:
            account = await s.get(Account, req.account_id)
        if account is None:
            raise RpcFailure(c.E_INVALID_SESSION, "The session has ended: sign in again.")
        if account.role != "parent":
            raise RpcFailure(c.E_NOT_A_PARENT, "Staff accounts come from the school's roster and are not deleted here.")
        pair_key, ip_key = self._login_keys(account.email, req.client_ip)
        limits = self._login_limits(pair_key, ip_key)
        attempt = await self._claim_attempt(limits, now)
        try:
            ok = await self.passwords.verify(account.password_hash, req.password)
        except PasswordsBusy:
            await self._release_attempt(attempt)
            log.warning("password_hashing_busy")
            raise _busy() from None
        if not ok:
            log.info("delete_account_wrong_password", account_id=account.id)
            raise RpcFailure(c.E_WRONG_PASSWORD, "That is not your password: nothing was deleted.")
        await self._release_attempt(attempt, pair_key)
        if not await self._erase(account.id, by="parent"):
            raise RpcFailure(c.E_INVALID_SESSION, "The session has ended: sign in again.")
        return c.AccountDeletedReply(account_id=account.id)

    async def delete_parent(self, req: c.DeleteParentRequest) -> c.AccountDeletedReply:
        """`portal parent delete`: an operator deletes a parent's account, no password asked."""
        if bool(req.email.strip()) == bool(req.account_id.strip()):
            raise RpcFailure(c.E_VALIDATION, "Name the account by its email address or by its id, not both.")
        async with self.runtime.db.reader() as s:
            if req.account_id.strip():
                account = await s.get(Account, req.account_id.strip())
            else:
                account = await self._account_by_email(s, req.email.strip())
        missing = "No account has that id." if req.account_id.strip() else "No account has that email address."
        if account is None:
            raise RpcFailure(c.E_NO_SUCH_ACCOUNT, missing)
        if account.role != "parent":
            raise RpcFailure(c.E_NOT_A_PARENT, "That account belongs to a member of staff, not a parent.")
        if not await self._erase(account.id, by="operator"):
            raise RpcFailure(c.E_NO_SUCH_ACCOUNT, missing)
        return c.AccountDeletedReply(account_id=account.id)

    async def _erase(self, account_id: str, *, by: str) -> bool:
        """Delete a parent's account row with its tokens and sessions, in one transaction with
        the events that end its sessions everywhere and tell every service to erase what it
        keeps about the parent (`identity.account.deleted.v1`, ids only). False when it was
        gone already (a second deletion at the same moment)."""
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            account = (
                await uow.session.execute(select(Account).where(col(Account.id) == account_id).with_for_update())
            ).scalar_one_or_none()
            if account is None:
                return False
            await self._revoke_all(uow, account.id, now)
            await uow.session.execute(delete(Token).where(col(Token.account_id) == account.id))
            await uow.session.execute(delete(Session).where(col(Session.account_id) == account.id))
            # Its failed logins are counted under a hash of the address; they go with it. The
            # counted emails to the address (rate_events) stay: a new account at the same
            # address must not get a fresh budget of emails.
            prefix = f"a:{_hashed('email', account.email_key)}:"
            await uow.session.execute(delete(LoginFailure).where(col(LoginFailure.key).startswith(prefix)))
            await uow.session.delete(account)
            await uow.emit(
                c.ACCOUNT_DELETED,
                c.AccountDeleted(account_id=account.id, role="parent"),
                aggregate=f"account:{account.id}",
            )
        log.info("account_deleted", account_id=account_id, by=by)
        self.runtime.db.scrub_soon()
        return True

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
        enable_as_of: datetime | None = None,
    ) -> tuple[Account | None, bool]:
        """Create or update a member of staff; new ones without a password get a set-password link.

        With `enable_as_of` (a roster event's time) a disabled member of staff is enabled again,
        unless disabling was decided after that time."""
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
        if enable_as_of is not None and account.disabled_at is not None:
            if account.access_changed_at is None or enable_as_of >= account.access_changed_at:
                await self._set_disabled(uow, account, False, now=now, decided_at=enable_as_of, by="roster")
            else:
                log.info("staff_upserted_stays_disabled", account_id=account.id)
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

    async def on_staff_event(self, uow: UnitOfWork, event: Event, subject: str) -> None:
        """The platform's roster names a member of staff, or says they left."""
        if isinstance(event, StaffLeft):
            await self.on_staff_left(uow, event)
        else:
            await self.on_staff_upserted(uow, event, subject)

    async def on_staff_left(self, uow: UnitOfWork, event: StaffLeft) -> None:
        """A member of staff left: disabled, unless enabling was decided after the event."""
        account = (
            await uow.session.execute(select(Account).where(col(Account.staff_id) == event.staff_id).with_for_update())
        ).scalar_one_or_none()
        if account is None or account.role == "parent":
            log.info("staff_left_unknown")
            return
        if account.access_changed_at is not None and event.occurred_at < account.access_changed_at:
            log.info("staff_left_stale", account_id=account.id)
            return
        await self._set_disabled(uow, account, True, now=utcnow(), decided_at=event.occurred_at, by="roster")
        log.info("staff_left", account_id=account.id)

    async def on_staff_upserted(self, uow: UnitOfWork, event: Event, subject: str) -> None:
        """The platform's roster names a member of staff."""
        assert isinstance(event, StaffUpserted)  # the consumer's other schema
        account, created = await self.upsert_staff(
            uow,
            staff_id=event.staff_id,
            email=event.email.strip(),
            name=event.name,
            role=event.role,
            school_id=event.school_id,
            trust_id=event.trust_id,
            password_hash=None,
            enable_as_of=event.occurred_at,
        )
        if account is not None:
            log.info("staff_upserted", account_id=account.id, created=created, role=event.role)

    async def create_staff(self, req: c.CreateStaffRequest) -> c.CreateStaffReply:
        """`portal staff add`: one member of staff, with a password or a set-password email."""
        email = self._check_email(req.email)
        name = self._check_name(req.name)
        if req.role == "trust_admin" and not req.trust_id:
            raise RpcFailure(c.E_VALIDATION, "A trust admin needs --trust.", fields=field_errors(trust_id="required"))
        if req.role != "trust_admin" and not req.school_id:
            raise RpcFailure(
                c.E_VALIDATION, "A teacher or school admin needs --school.", fields=field_errors(school_id="required")
            )
        password_hash = None
        if req.password is not None:
            await self._check_password(req.password, email=email, name=name)
            password_hash = await self._hash(req.password)
        async with self.runtime.unit_of_work() as uow:
            account, created = await self.upsert_staff(
                uow,
                staff_id=None,
                email=email,
                name=name,
                role=req.role,
                school_id=req.school_id,
                trust_id=req.trust_id,
                password_hash=password_hash,
            )
        if account is None:
            raise RpcFailure(c.E_CONFLICT, "That email address already belongs to another account.")
        return c.CreateStaffReply(account_id=account.id, created=created, disabled=account.disabled_at is not None)

    # -- disabling staff ---------------------------------------------------------------------

    async def _set_disabled(
        self, uow: UnitOfWork, account: Account, disabled: bool, *, now: datetime, decided_at: datetime, by: str
    ) -> None:
        """Disable a member of staff (every session ends, unused emailed links stop working) or
        enable them again; their password stays as it was."""
        changed = (account.disabled_at is not None) != disabled
        account.access_changed_at = decided_at
        account.updated_at = now
        if disabled:
            account.disabled_at = account.disabled_at or now
            # A reset or set-password link sent earlier must not let them back in later either.
            await uow.session.execute(
                delete(Token).where(col(Token.account_id) == account.id, col(Token.used_at).is_(None))
            )
            # Even when already disabled: the event is what every gateway replica drops the
            # account's cached sessions on, and what the caller waits for.
            await self._revoke_all(uow, account.id, now)
        else:
            account.disabled_at = None
        uow.session.add(account)
        if changed:
            await uow.emit(
                c.STAFF_ACCESS_CHANGED,
                c.StaffAccessChanged(account_id=account.id, disabled=disabled, by=by),
                aggregate=f"account:{account.id}",
            )
        log.info("staff_disabled" if disabled else "staff_enabled", account_id=account.id, changed=changed, by=by)

    @staticmethod
    def _member(account: Account) -> c.StaffMember:
        return c.StaffMember(
            account_id=account.id,
            name=account.name,
            email=account.email,
            role=cast("Any", account.role),
            school_id=account.school_id,
            trust_id=account.trust_id,
            disabled=account.disabled_at is not None,
            disabled_at=account.disabled_at,
        )

    @staticmethod
    def _in_scope(account: Account, scope: c.AdminScope) -> bool:
        if account.role == "trust_admin":
            return account.trust_id is not None and account.trust_id in scope.trust_ids
        return account.school_id is not None and account.school_id in scope.school_ids

    async def staff_list(self, req: c.StaffListRequest) -> c.StaffListReply:
        """Every member of staff of the scope's schools, and the trust admins of its trusts."""
        scope = req.scope
        if not scope.school_ids and not scope.trust_ids:
            return c.StaffListReply(staff=[])
        async with self.runtime.db.reader() as s:
            rows = (
                (
                    await s.execute(
                        select(Account)
                        .where(
                            col(Account.role).in_(c.STAFF_ROLES),
                            or_(
                                col(Account.school_id).in_(scope.school_ids),
                                col(Account.trust_id).in_(scope.trust_ids),
                            ),
                        )
                        .order_by(col(Account.name), col(Account.id))
                    )
                )
                .scalars()
                .all()
            )
        return c.StaffListReply(staff=[self._member(a) for a in rows if self._in_scope(a, scope)])

    async def set_staff_access(self, req: c.StaffAccessRequest) -> c.StaffMember:
        """Disable a member of staff or enable them again (`portal staff disable` / `enable`, or
        an admin within their scope). Nobody disables themselves."""
        if (req.account_id is None) == (req.email is None):
            raise RpcFailure(c.E_VALIDATION, "Name the member of staff by account id or by email address.")
        missing = RpcFailure(c.E_NOT_FOUND, "There is no such member of staff.")
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            where = (
                col(Account.id) == req.account_id
                if req.account_id is not None
                else col(Account.email_key) == normalise_email(req.email or "")
            )
            account = (await uow.session.execute(select(Account).where(where).with_for_update())).scalar_one_or_none()
            if account is None or account.role not in c.STAFF_ROLES:
                raise missing
            if req.scope is not None and not self._in_scope(account, req.scope):
                raise missing
            if req.actor_id and req.actor_id == account.id:
                raise RpcFailure(c.E_FORBIDDEN, "You cannot disable or enable your own account.")
            await self._set_disabled(uow, account, req.disabled, now=now, decided_at=now, by=req.actor_id or "operator")
            member = self._member(account)
        return member

    async def contacts(self, req: c.ContactsRequest) -> c.ContactsReply:
        """Names and addresses of the given accounts."""
        if not req.ids:
            return c.ContactsReply(contacts=[])
        async with self.runtime.db.reader() as s:
            rows = (await s.execute(select(Account).where(col(Account.id).in_(req.ids)))).scalars().all()
        return c.ContactsReply(
            contacts=[
                c.Contact(
                    id=a.id,
                    email=a.email,
                    name=a.name,
                    language=self._language(a),
                    last_signed_in_at=a.last_signed_in_at,
                )
                for a in rows
            ]
        )

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
        """Forget login failures and counted emails older than every window that counts them."""
        now = utcnow()
        login_window = max(HOUR, timedelta(minutes=self.s.identity_account_failure_window_minutes))
        async with self.runtime.db.session() as s:
            await s.execute(delete(LoginFailure).where(col(LoginFailure.at) < now - login_window - HOUR))
            await s.execute(delete(RateEvent).where(col(RateEvent.at) < now - 2 * HOUR))
