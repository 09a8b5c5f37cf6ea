"""The sender: takes due emails from the ledger and sends each over SMTP, once.

Replicas share the ledger. An email is claimed (status `sending`, a claim that its holder
renews while it lives) before it is sent; a claim that lapses (its holder died) returns the
email to `pending`. Failures that may pass (4xx, no connection) are retried with exponential
backoff and jitter until the give-up time; 5xx replies fail at once, and so does a request
that cannot be rendered into an email (retrying it would change nothing, and it would sit at the
head of the queue for two days). Every outcome is published through the outbox.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError
from sqlalchemy import case, func, select, text, true, update
from sqlmodel import col

from contracts.addresses import normalise_email
from contracts.base import utcnow
from contracts.identity import CONTACTS, ContactsRequest
from contracts.kit import rpc, tracing
from contracts.kit.db import dialect_name
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from contracts.kit.runtime import ServiceRuntime
from contracts.notify import (
    EMAIL_DELIVERED,
    EMAIL_FAILED,
    REQUESTS,
    EmailDelivered,
    EmailFailed,
    redact_request,
    request_subject,
)
from notify.render import Renderer, RenderError
from notify.smtp import Rejected, SmtpConnection, SmtpTarget, TlsRefused, TryLater, Unconfirmed
from notify.tables import DELIVERING, FAILED, PENDING, SENDING, SENT, Email

if TYPE_CHECKING:
    from notify.app import Settings

T = TypeVar("T")

log = get_logger("notify.sender")


_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")


def scrub(text: str) -> str:
    """Server replies often quote the address; events and logs carry none."""
    return _ADDRESS.sub("<address>", text)[:300]


# Emails a worker takes at once: their daily places are counted, and their outcomes and events
# recorded, in one transaction per batch rather than per email.
BATCH = 25
EMAILS = Email.__table__  # statements on the table itself skip the ORM's bookkeeping


@dataclass
class _Ready:
    """A rendered email, ready to go."""

    email: Email
    recipient: str
    key: str  # the recipient's daily-cap key
    message_id: str | None
    content: bytes


@dataclass
class _Outcome:
    """What became of an email, recorded with the rest of its batch."""

    email: Email
    status: str
    reason: str | None = None
    code: int | None = None
    detail: str = ""
    counted: bool = False  # an attempt not yet counted
    status_from: str = SENDING
    first: datetime | None = None
    delivered: bool = False
    traceparent: str | None = None  # the span of its attempt, which its event continues


def _trace(traceparent: str | None) -> dict[str, str] | None:
    return {tracing.TRACEPARENT: traceparent} if traceparent else None


class LostClaim(Exception):
    """Another sender took the email over (our claim had lapsed)."""


class Sender:
    """Claims due emails and sends them with a few concurrent SMTP connections."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings, renderer: Renderer, target: SmtpTarget) -> None:
        self.runtime = runtime
        self.settings = settings
        self.renderer = renderer
        self.target = target
        self.token = runtime.instance
        self.claim = timedelta(seconds=settings.notify_claim_seconds)
        # Claimed emails waiting for a worker, urgent ones first (then in the order claimed): an
        # email a person waits for overtakes the bulk emails claimed before it.
        self.queue: asyncio.PriorityQueue[tuple[int, int, Email]] = asyncio.PriorityQueue()
        self._claimed_count = itertools.count()
        self.held: set[int] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._busy: set[int] = set()  # workers sending an email now
        self._stopping = False
        self.sent_total = 0
        # Why the SMTP server is refused (no TLS where it is required), until a send succeeds.
        self.smtp_problem: str | None = None

    def health(self) -> str:
        """notify's `smtp` health check: "ok", or why mail cannot go out."""
        return "ok" if self.smtp_problem is None else self.smtp_problem

    def wake(self) -> None:
        """New emails were recorded."""
        self._wake.set()

    async def start(self) -> None:
        """Start the dispatcher, the claim renewer and the workers."""
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._dispatch(), name="notify-dispatch"),
            asyncio.create_task(self._renew(), name="notify-renew"),
            *(
                asyncio.create_task(self._work(i), name=f"notify-smtp-{i}")
                for i in range(self.settings.notify_smtp_concurrency)
            ),
        ]

    async def stop(self, *, grace: float = 2.0) -> None:
        """Stop taking emails: the ones being sent are finished (for at most `grace` seconds),
        the ones claimed and not started go back to the ledger at once, for another replica."""
        self._stopping = True
        dispatch_and_renew, workers = self._tasks[:2], self._tasks[2:]
        for task in dispatch_and_renew:
            task.cancel()
        while not self.queue.empty():
            self.queue.get_nowait()  # not started: released with the rest of `held` below
        busy = [task for index, task in enumerate(workers) if index in self._busy]
        for task in workers:
            if task not in busy:
                task.cancel()
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping: how a task ended does not matter
                pass
        self._tasks = []
        await self._release_held()

    # -- claiming -------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            try:
                # Two batches a worker: enough to keep each busy, few enough not to keep emails
                # from another replica with nothing to do.
                room = self.settings.notify_smtp_concurrency * BATCH * 2 - self.queue.qsize()
                claimed = await self._claim(room) if room > 0 else []
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away for a moment
                log.warning("notify_claim_failed", error=type(exc).__name__)
                claimed = []
                await asyncio.sleep(1.0)
            for email in claimed:
                assert email.id is not None  # read from the ledger
                self.held.add(email.id)
                self.queue.put_nowait((email.priority, next(self._claimed_count), email))
            if claimed and len(claimed) == room:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), 0.5)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _claim(self, limit: int) -> list[Email]:
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            s = uow.session
            # A holder that died before the final "." of an email: the server discarded it.
            await s.execute(
                update(Email)
                .where(col(Email.status) == SENDING, col(Email.claim_until) < now)
                .values(status=PENDING, claimed_by=None, claim_until=None)
            )
            # A holder that died after it: it may have been delivered, so it never goes again.
            stale = (
                (await s.execute(select(Email).where(col(Email.status) == DELIVERING, col(Email.claim_until) < now)))
                .scalars()
                .all()
            )
            for email in stale:
                await self._finish(uow, email, SENT, detail="unconfirmed: the sender stopped after the final dot")
            due = (
                select(col(Email.id))
                .where(col(Email.status) == PENDING, col(Email.next_attempt_at) <= now)
                .order_by(col(Email.priority), col(Email.next_attempt_at), col(Email.id))
                .limit(limit)
            )
            if dialect_name(s) == "postgresql":
                # Replicas claiming at once each take other emails rather than wait for each other.
                due = due.with_for_update(skip_locked=True)
            await s.execute(
                update(Email)
                .where(col(Email.id).in_(due.scalar_subquery()), col(Email.status) == PENDING)
                .values(status=SENDING, claimed_by=self.token, claim_until=now + self.claim)
                .execution_options(synchronize_session=False)
            )
            return list(
                (
                    await s.execute(
                        select(Email)
                        .where(col(Email.status) == SENDING, col(Email.claimed_by) == self.token)
                        .where(col(Email.id).not_in(self.held) if self.held else true())
                        .order_by(col(Email.priority), col(Email.next_attempt_at), col(Email.id))
                    )
                ).scalars()
            )

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.claim.total_seconds() / 3)
            if not self.held:
                continue
            try:
                async with self.runtime.db.session() as s:
                    await s.execute(
                        update(Email)
                        .where(col(Email.id).in_(list(self.held)), col(Email.claimed_by) == self.token)
                        .values(claim_until=utcnow() + self.claim)
                    )
            except Exception as exc:  # noqa: BLE001 - tried again a third of a claim later; a claim that lapses is taken over
                log.warning("notify_renew_failed", error=type(exc).__name__)

    async def _release_held(self) -> None:
        if not self.held:
            return
        try:
            async with self.runtime.db.session() as s:
                await s.execute(
                    update(Email)
                    .where(
                        col(Email.id).in_(list(self.held)),
                        col(Email.status) == SENDING,
                        col(Email.claimed_by) == self.token,
                    )
                    .values(status=PENDING, claimed_by=None, claim_until=None)
                )
        except Exception:  # noqa: BLE001, S110 - the claims lapse by themselves
            pass
        self.held.clear()

    # -- sending --------------------------------------------------------------------------

    async def _work(self, index: int) -> None:
        conn = SmtpConnection(self.target, timeout=self.settings.notify_smtp_timeout)
        try:
            while not self._stopping:
                try:
                    *_, first = await asyncio.wait_for(self.queue.get(), 10.0)
                except TimeoutError:
                    await conn.close()  # idle: don't hold a connection open
                    continue
                batch = [first]
                while len(batch) < BATCH and not self.queue.empty():
                    batch.append(self.queue.get_nowait()[-1])
                self._busy.add(index)
                try:
                    left = await self._send_batch(conn, batch)
                except asyncio.CancelledError:
                    # Stopping: what is still `sending` of the batch is released with `held`.
                    raise
                except Exception as exc:  # the database away while recording the outcomes
                    log.exception("notify_batch_crashed", emails=len(batch), error=type(exc).__name__)
                    for email in batch:
                        await self._after_crash(email, exc)
                    left = set()
                finally:
                    self._busy.discard(index)
                # Those not started (stopping) stay held: `stop` hands them back at once.
                self.held.difference_update(email.id for email in batch if email.id not in left)
        finally:
            await conn.close()

    async def _after_crash(self, email: Email, exc: Exception) -> None:
        """Put a crashed attempt back with the usual backoff, so that an email that crashes
        every time waits longer each time instead of coming back first every claim period."""
        try:
            await self._retry(email, TryLater(f"crashed: {type(exc).__name__}"), counted=True)
        except Exception:  # noqa: BLE001, S110 - the claim lapses and the email is taken up again
            pass

    async def _send_batch(self, conn: SmtpConnection, batch: list[Email]) -> set[int | None]:
        """Send a batch over one connection. Each email is still marked `delivering` on its own
        before its final "."; what comes before (rendering, the daily places) and after (the
        outcomes and their events) is done for the whole batch at once. Returns the ids of
        those not started because the sender is stopping."""
        now = utcnow()
        ready = await self._prepare_all(batch, now)
        outcomes: list[_Outcome] = []
        # After rendering: an email that can never be sent takes none of the address's places.
        first = [r for r in ready if r.email.first_attempt_at is None]
        if first:
            allowed, over = await self._reserve(first, now)
            for r in first:
                if r.email.id in over:
                    cap = f"over {self.settings.notify_daily_cap} emails a day"
                    outcomes.append(_Outcome(r.email, FAILED, reason="daily_cap", detail=cap))
                elif r.email.id not in allowed:
                    log.info("notify_claim_lost", email_id=r.email.id)
            ready = [r for r in ready if r.email.first_attempt_at is not None or r.email.id in allowed]

        left: set[int | None] = set()
        for index, r in enumerate(ready):
            if self._stopping:
                left = {later.email.id for later in ready[index:]}
                break
            outcome = await self._guarded(r.email, self._traced_attempt(conn, r, now))
            if outcome is not None:
                outcomes.append(outcome)
        if outcomes:
            await self._finish_all(outcomes)
        return left

    async def _guarded(self, email: Email, step: Awaitable[T]) -> T | None:
        """`step` of one email's sending, or None when its claim was lost or the step crashed
        (logged, and the email put back with the usual backoff): the batch goes on without it."""
        try:
            return await step
        except LostClaim:
            log.info("notify_claim_lost", email_id=email.id)
        except Exception as exc:  # logged, and tried again later with backoff
            log.exception("notify_attempt_crashed", email_id=email.id, error=type(exc).__name__)
            await self._after_crash(email, exc)
        return None

    async def _traced_attempt(self, conn: SmtpConnection, r: _Ready, now: datetime) -> _Outcome | None:
        # A span of the trace that asked for the email (tracing on); what the attempt emits
        # (delivered, failed) continues it.
        email = r.email
        with tracing.span(
            "send email",
            traceparent=email.traceparent,
            kind="CLIENT",
            attributes={"email.kind": email.kind, "messaging.message.id": email.request_id},
        ):
            outcome = await self._attempt(conn, r, now)
            if outcome is not None:
                outcome.traceparent = tracing.current_traceparent()
        return outcome

    async def _prepare_all(self, batch: list[Email], now: datetime) -> list[_Ready]:
        ready: list[_Ready] = []
        for email in batch:
            prepared = await self._guarded(email, self._prepare(email, now))
            if prepared is not None:
                ready.append(_Ready(email, *prepared))
            await asyncio.sleep(0)  # rendering is all CPU: let the other workers have the loop
        return ready

    async def _prepare(self, email: Email, now: datetime) -> tuple[str, str, str | None, bytes] | None:
        """(envelope recipient, its daily-cap key, Message-ID, content), or None when the email
        was finished or put back instead."""
        try:
            request = REQUESTS[request_subject(email.kind)].model_validate_json(email.request)
        except (KeyError, ValidationError) as exc:
            await self._render_failed(email, RenderError(f"the recorded request is not valid: {type(exc).__name__}"))
            return None
        give_up_at = email.created_at + timedelta(hours=self.settings.notify_give_up_hours)
        if now >= give_up_at:
            await self._finish_now(email, FAILED, reason="gave_up", detail=email.last_error or "")
            return None

        recipient, name, language = email.recipient, request.to_name, None
        if recipient is None:
            try:
                reply = await rpc.call(
                    self.runtime.broker.connection,
                    CONTACTS,
                    ContactsRequest(ids=[email.parent_id]),
                    timeout=5,
                )
            except rpc.RpcError as exc:
                await self._retry(email, TryLater(f"identity: {exc.code}"), counted=False)
                return None
            if not reply.contacts:
                await self._finish_now(email, FAILED, reason="no_recipient", detail="no such account")
                return None
            recipient, name = reply.contacts[0].email, reply.contacts[0].name
            language = reply.contacts[0].language  # the parent's own, for a request that names none
        key = normalise_email(recipient)

        if email.content is not None:  # rendered by an earlier attempt, which recorded its recipient
            return recipient, email.recipient_key or key, email.message_id, email.content
        try:
            rendered = self.renderer.render(request, recipient=recipient, recipient_name=name, language=language)
        except RenderError as exc:
            await self._render_failed(email, exc)
            return None
        return rendered.recipient, key, rendered.message_id, rendered.content

    async def _attempt(self, conn: SmtpConnection, ready: _Ready, now: datetime) -> _Outcome | None:
        """Send one email; its outcome when it is finished (sent, failed), None when it was put
        back for a retry."""
        email = ready.email
        marked = False

        async def mark_delivering() -> None:
            nonlocal marked
            # A connection, not a session: this is the one statement per email, and the ORM's
            # bookkeeping around it cost as much as the statement.
            async with self.runtime.db.engine.begin() as conn:
                result = await conn.execute(
                    update(EMAILS)
                    .where(EMAILS.c.id == email.id, EMAILS.c.claimed_by == self.token, EMAILS.c.status == SENDING)
                    .values(
                        status=DELIVERING,
                        attempts=EMAILS.c.attempts + 1,
                        recipient=ready.recipient,
                        recipient_key=ready.key,
                        message_id=ready.message_id,
                        first_attempt_at=func.coalesce(EMAILS.c.first_attempt_at, now),
                        claim_until=utcnow() + self.claim,
                    )
                )
                if result.rowcount != 1:
                    raise LostClaim(email.id)
            marked = True

        try:
            await conn.send(
                sender=self.settings.mail_from,
                recipient=ready.recipient,
                content=ready.content,
                before_final_dot=mark_delivering,
            )
        except Rejected as exc:
            return _Outcome(
                email,
                FAILED,
                reason="rejected",
                code=exc.code,
                detail=scrub(str(exc)),
                counted=not marked,
                status_from=DELIVERING if marked else SENDING,
                first=now,
            )
        except TryLater as exc:
            if isinstance(exc, TlsRefused):
                if self.smtp_problem != exc.detail:
                    log.error("smtp_refused", target=self.target.describe(), detail=exc.detail)
                self.smtp_problem = exc.detail
            if marked:
                # A 4xx reply to the final "." itself: the server did not take it. The same
                # bytes go next time (the same Date and Message-ID).
                await self._retry(email, exc, counted=False, status_from=DELIVERING, content=ready.content)
            else:
                await self._retry(email, exc, counted=True, first=now)
            return None
        except Unconfirmed as exc:
            return _Outcome(email, SENT, detail=f"unconfirmed: {exc}", status_from=DELIVERING)
        self.smtp_problem = None
        return _Outcome(email, SENT, status_from=DELIVERING, delivered=True)

    async def _render_failed(self, email: Email, exc: RenderError) -> None:
        log.error("email_render_failed", email_id=email.id, kind=email.kind, error=str(exc))
        await self._finish_now(email, FAILED, reason="render_failed", detail=str(exc))

    async def _reserve(self, ready: list[_Ready], now: datetime) -> tuple[set[int], set[int]]:
        """Take a daily place of its recipient for each of these emails, in their order, in one
        transaction: (the ids that have one, the ids over the cap). An id in neither is no
        longer ours (our claim lapsed)."""
        cap = self.settings.notify_daily_cap
        keys = sorted({r.key for r in ready})
        ids = [r.email.id for r in ready]
        async with self.runtime.db.session() as s:
            if dialect_name(s) == "postgresql":
                # Replicas sending to one address at once must count one after the other. The
                # locks are taken in one order (of their numbers), so two batches sharing
                # addresses wait for each other rather than deadlock.
                await s.execute(
                    text(
                        "SELECT pg_advisory_xact_lock(h) FROM "
                        "(SELECT DISTINCT hashtext(k) AS h FROM unnest(CAST(:keys AS text[])) AS k ORDER BY h) AS l"
                    ),
                    {"keys": keys},
                )
            taken: dict[str, int] = dict(
                (
                    await s.execute(
                        select(EMAILS.c.recipient_key, func.count())
                        .where(
                            EMAILS.c.recipient_key.in_(keys),
                            EMAILS.c.first_attempt_at >= now - timedelta(days=1),
                            EMAILS.c.id.not_in(ids),
                        )
                        .group_by(EMAILS.c.recipient_key)
                    )
                ).all()
            )
            allowed: dict[int, str] = {}
            over: set[int] = set()
            for r in ready:
                assert r.email.id is not None  # read from the ledger
                if taken.get(r.key, 0) >= cap:
                    over.add(r.email.id)
                else:
                    taken[r.key] = taken.get(r.key, 0) + 1
                    allowed[r.email.id] = r.key
            if not allowed:
                return set(), over
            ours = set(
                (
                    await s.execute(
                        update(EMAILS)
                        .where(
                            EMAILS.c.id.in_(list(allowed)),
                            EMAILS.c.claimed_by == self.token,
                            EMAILS.c.status == SENDING,
                        )
                        .values(first_attempt_at=now, recipient_key=case(allowed, value=EMAILS.c.id))
                        .returning(EMAILS.c.id)
                    )
                ).scalars()
            )
        for r in ready:
            if r.email.id in ours:
                r.email.first_attempt_at = now
        return ours, over

    def _delay(self, attempts: int) -> float:
        base = self.settings.notify_retry_base_seconds
        return min(self.settings.notify_retry_max_seconds, base * 2 ** max(0, attempts - 1)) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret

    async def _retry(
        self,
        email: Email,
        exc: TryLater,
        *,
        counted: bool,
        status_from: str = SENDING,
        first: datetime | None = None,
        content: bytes | None = None,
    ) -> None:
        now = utcnow()
        attempts = email.attempts + 1
        delay = self._delay(attempts)
        give_up_at = email.created_at + timedelta(hours=self.settings.notify_give_up_hours)
        if now + timedelta(seconds=delay) >= give_up_at:
            await self._finish_now(
                email,
                FAILED,
                reason="gave_up",
                code=exc.code,
                detail=exc.detail[:300],
                counted=counted,
                status_from=status_from,
                first=first,
            )
            return
        values: dict[str, object] = {
            "status": PENDING,
            "next_attempt_at": now + timedelta(seconds=delay),
            "claimed_by": None,
            "claim_until": None,
            "last_error": exc.detail[:300],
            "smtp_code": exc.code,
        }
        if counted:
            values["attempts"] = col(Email.attempts) + 1
        if first is not None:
            values["first_attempt_at"] = func.coalesce(col(Email.first_attempt_at), first)
        if content is not None:
            values["content"] = content
        async with self.runtime.db.session() as s:
            await s.execute(
                update(Email)
                .where(col(Email.id) == email.id, col(Email.claimed_by) == self.token, col(Email.status) == status_from)
                .values(**values)
            )
        self.runtime.metrics.emails.labels("retried").inc()
        log.info(
            "email_retry", email_id=email.id, kind=email.kind, retry_in=round(delay, 1), error=scrub(exc.detail)[:120]
        )

    async def _finish_now(
        self,
        email: Email,
        status: str,
        *,
        reason: str | None = None,
        code: int | None = None,
        detail: str = "",
        counted: bool = False,
        status_from: str = SENDING,
        first: datetime | None = None,
    ) -> None:
        """Finish one email on its own (one that cannot be sent, or gave up)."""
        outcome = _Outcome(
            email,
            status,
            reason=reason,
            code=code,
            detail=detail,
            counted=counted,
            status_from=status_from,
            first=first,
        )
        if not await self._finish_all([outcome]):
            raise LostClaim(email.id)

    async def _finish_all(self, outcomes: list[_Outcome]) -> list[_Outcome]:
        """Record outcomes and their events in one transaction; those whose claim we lost (our
        claim lapsed, another sender took the email over) are left as they are. Returns the
        ones recorded."""
        by_id = {o.email.id: o for o in outcomes}
        done: list[_Outcome] = []
        async with self.runtime.unit_of_work() as uow:
            current = (
                await uow.session.execute(
                    select(Email).where(col(Email.id).in_(list(by_id)), col(Email.claimed_by) == self.token)
                )
            ).scalars()
            for email in current:
                outcome = by_id[email.id]
                if email.status != outcome.status_from:
                    continue
                if outcome.counted:
                    email.attempts += 1
                if outcome.first is not None and email.first_attempt_at is None:
                    email.first_attempt_at = outcome.first
                await self._finish(
                    uow,
                    email,
                    outcome.status,
                    reason=outcome.reason,
                    code=outcome.code,
                    detail=outcome.detail,
                    traceparent=outcome.traceparent,
                )
                done.append(outcome)
        recorded = {o.email.id for o in done}
        for o in outcomes:
            if o.email.id not in recorded:
                log.info("notify_claim_lost", email_id=o.email.id)
        self.sent_total += sum(1 for o in done if o.delivered)
        return done

    async def _finish(
        self,
        uow: UnitOfWork,
        email: Email,
        status: str,
        *,
        reason: str | None = None,
        code: int | None = None,
        detail: str = "",
        traceparent: str | None = None,
    ) -> None:
        email.status = status
        email.finished_at = utcnow()
        # It will never be sent again: what it carried (the working link, code or token, and
        # the rendered message) goes now; the record keeps its ids, kind, status and times.
        email.content = None
        email.request = redact_request(email.request).decode()
        email.claimed_by = None
        email.claim_until = None
        email.smtp_code = code if code is not None else email.smtp_code
        email.last_error = detail[:300] or email.last_error
        uow.session.add(email)
        uow.after_commit(lambda: self.runtime.metrics.emails.labels(status).inc())
        if status == SENT:
            delivered = EmailDelivered(
                request_id=email.request_id, kind=email.kind, reference=email.reference, attempts=email.attempts
            )
            await uow.emit(EMAIL_DELIVERED, delivered, aggregate=email.request_id, headers=_trace(traceparent))
            log.info("email_sent", email_id=email.id, kind=email.kind, attempts=email.attempts)
        else:
            failed = EmailFailed(
                request_id=email.request_id,
                kind=email.kind,
                reference=email.reference,
                attempts=email.attempts,
                reason=reason or "rejected",
                smtp_code=email.smtp_code,
                detail=scrub(detail),
            )
            await uow.emit(EMAIL_FAILED, failed, aggregate=email.request_id, headers=_trace(traceparent))
            log.warning("email_failed", email_id=email.id, kind=email.kind, reason=reason, smtp_code=email.smtp_code)
