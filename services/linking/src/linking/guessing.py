"""Guessing limits on link codes, and alerts for operators.

Every failed code (a redemption, a preview, a registration's check) is a row in linking's
database, so every replica counts the same failures. A parent with too many failures in the
last hour is refused before their code is even looked at; a network address is only ever
refused a failure (a school hall shares one address, and its parents' good codes always work).
Failures per minute, per trust and across the deployment, above a threshold are logged as an
alert and kept for `portal alerts`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from contracts import linking as contract
from contracts.kit.db import insert
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcFailure
from linking import codes
from linking.context import LinkingContext
from linking.tables import GuessAlert, GuessFailure, Link, LinkCode, School

log = get_logger("linking.guessing")

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
# Pruning on a few failures in a hundred keeps the table to about an hour of rows without
# every failure paying for a delete.
PRUNE_CHANCE = 0.02


def too_many(retry_after: float) -> RpcFailure:
    """429 `too_many_attempts`, with the seconds for `Retry-After`."""
    seconds = max(1, int(retry_after + 0.999))
    return RpcFailure(
        contract.E_TOO_MANY_ATTEMPTS, f"Too many wrong codes; retry after {seconds} s", retry_after=seconds
    )


class Guessing:
    """Counts failed codes, refuses guessers, raises alerts."""

    def __init__(self, ctx: LinkingContext) -> None:
        self.ctx = ctx
        self.limits = ctx.limits

    async def _retry_after(
        self, s: AsyncSession, where: ColumnElement[bool], limit: int, now: datetime
    ) -> float | None:
        # While the limit-th newest failure is inside the window the limit is reached; it
        # ends when that one leaves the window.
        at = (
            await s.execute(
                select(col(GuessFailure.at))
                .where(where, col(GuessFailure.at) > now - HOUR)
                .order_by(col(GuessFailure.at).desc())
                .offset(limit - 1)
                .limit(1)
            )
        ).scalar_one_or_none()
        return None if at is None else (at + HOUR - now).total_seconds()

    async def check_parent(self, parent_id: str | None) -> None:
        """Refuse a parent who reached their limit, before their code is looked at."""
        if not parent_id:
            return
        now = self.ctx.now()
        async with self.ctx.db.reader() as s:
            retry = await self._retry_after(
                s, col(GuessFailure.parent_id) == parent_id, self.limits.parent_failures_per_hour, now
            )
        if retry is not None:
            log.info("code_refused_parent_limit", parent_id=parent_id)
            raise too_many(retry)

    async def redeem_failed(self, req: contract.RedeemRequest) -> None:
        """A redemption (or a registration's check, which has no parent yet) failed."""
        await self._failed("redeem" if req.parent_id else "register", req.code, req.parent_id, req.client_ip)

    async def preview_failed(self, req: contract.PreviewCodeRequest) -> None:
        """A preview failed."""
        await self._failed("preview", req.code, req.parent_id, req.client_ip)

    async def _failed(self, kind: str, code: str, parent_id: str | None, client_ip: str) -> None:
        now = self.ctx.now()
        client_key = self.ctx.addresses.client_key(client_ip) if client_ip else None
        retry = None
        async with self.ctx.db.session() as s:
            trust_id = await self._trust_of(s, code, parent_id)
            s.add(GuessFailure(at=now, kind=kind, parent_id=parent_id, client_key=client_key, trust_id=trust_id))
            await s.flush()
            if random.random() < PRUNE_CHANCE:  # noqa: S311 - not a secret
                await s.execute(delete(GuessFailure).where(col(GuessFailure.at) <= now - HOUR))
            await self._watch(s, trust_id, now)
            if client_key:
                limit = self.limits.client_failures_per_hour
                # Failures counted under an old key still count, so rotating the key grants no fresh tries.
                of_client = col(GuessFailure.client_key).in_(self.ctx.addresses.client_keys(client_ip))
                over = await self._retry_after(s, of_client, limit + 1, now)
                if over is not None:
                    retry = await self._retry_after(s, of_client, limit, now)
        log.info("code_failed", kind=kind, parent_id=parent_id, trust_id=trust_id)
        if retry is not None:
            log.info("code_refused_client_limit", kind=kind, parent_id=parent_id)
            raise too_many(retry)

    async def _trust_of(self, s: AsyncSession, code: str, parent_id: str | None) -> str | None:
        # A code that exists (expired, used, revoked) names its school; a code that does not
        # says nothing, so the failure goes to the trust of the parent's newest link, if any.
        normal = codes.normalise(code)
        if normal is not None:
            found = (
                await s.execute(
                    select(col(School.trust_id))
                    .join(LinkCode, col(LinkCode.school_id) == col(School.school_id))
                    .where(col(LinkCode.code_hash).in_(self.ctx.vault.lookup_hashes(normal)))
                    .limit(1)
                )
            ).scalar_one_or_none()
            if found:
                return found
        if parent_id:
            return (
                await s.execute(
                    select(col(School.trust_id))
                    .join(Link, col(Link.school_id) == col(School.school_id))
                    .where(col(Link.parent_id) == parent_id)
                    .order_by(col(Link.created_at).desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        return None

    async def _watch(self, s: AsyncSession, trust_id: str | None, now: datetime) -> None:
        since = now - MINUTE
        # (scope, trust, failures in the last minute, threshold)
        checks: list[tuple[str, str | None, int, int]] = [
            (
                "deployment",
                None,
                (await s.execute(select(func.count()).where(col(GuessFailure.at) > since))).scalar_one(),
                self.limits.alert_deployment_failures_per_minute,
            )
        ]
        if trust_id:
            checks.append(
                (
                    "trust",
                    trust_id,
                    (
                        await s.execute(
                            select(func.count()).where(
                                col(GuessFailure.trust_id) == trust_id, col(GuessFailure.at) > since
                            )
                        )
                    ).scalar_one(),
                    self.limits.alert_trust_failures_per_minute,
                )
            )
        for scope, trust, failures, threshold in checks:
            if failures > threshold:
                await self._alert(s, scope, trust, failures, threshold, now)

    async def _alert(
        self, s: AsyncSession, scope: str, trust_id: str | None, failures: int, threshold: int, now: datetime
    ) -> None:
        # One row per scope and clock minute: replicas raising the same alert meet on its key,
        # and a long attack shows as one alert a minute rather than one per failure.
        key = f"{scope}:{trust_id or '*'}:{now:%Y-%m-%dT%H:%M}"
        # An INSERT's result is a CursorResult, which has the rowcount.
        result = cast(
            "CursorResult[Any]",
            await s.execute(
                insert(s, GuessAlert)
                .values(
                    alert_key=key,
                    scope=scope,
                    trust_id=trust_id,
                    at=now,
                    last_at=now,
                    failures=failures,
                    threshold=threshold,
                )
                .on_conflict_do_nothing(index_elements=["alert_key"])
            ),
        )
        if result.rowcount:
            log.error(
                "guessing_alert",
                scope=scope,
                trust_id=trust_id,
                failures=failures,
                threshold=threshold,
                window="1 minute",
            )
            return
        await s.execute(
            update(GuessAlert)
            .where(col(GuessAlert.alert_key) == key)
            .values(
                failures=case((col(GuessAlert.failures) < failures, failures), else_=col(GuessAlert.failures)),
                last_at=now,
            )
        )

    async def alerts(self, req: contract.AlertsRequest) -> contract.AlertsReply:
        """The alerts of the last `hours`, newest first (`portal alerts`)."""
        since = self.ctx.now() - timedelta(hours=req.hours)
        async with self.ctx.db.reader() as s:
            rows = (
                await s.execute(
                    select(GuessAlert)
                    .where(col(GuessAlert.last_at) >= since)
                    .order_by(col(GuessAlert.at).desc(), col(GuessAlert.id).desc())
                    .limit(req.limit)
                )
            ).scalars()
            return contract.AlertsReply(
                alerts=[
                    contract.GuessingAlert(
                        alert_id=a.id,
                        scope=a.scope,
                        trust_id=a.trust_id,
                        at=a.at,
                        last_at=a.last_at,
                        failures=a.failures,
                        threshold=a.threshold,
                    )
                    for a in rows
                ]
            )
