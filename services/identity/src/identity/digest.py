"""identity's part in the digest: who wants one, where it goes, and its one-click unsubscribe.

The unsubscribe link of each digest carries a token of its own (256 random bits, stored as a
hash like every token of an email, kept `PORTAL_IDENTITY_UNSUBSCRIBE_DAYS`): no key to keep or
rotate, and a token that leaks turns off one parent's digest and nothing else. It is not single
use (a second click, or a mail client's second POST, answers the same) and is never marked used,
so that it lasts its whole lifetime.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlmodel import col

from contracts import identity as c
from contracts.base import utcnow
from contracts.kit.db import insert
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcFailure
from contracts.kit.runtime import ServiceRuntime
from identity.preferences import announce, preferences_of
from identity.service import digest, new_token
from identity.tables import Account, Token

if TYPE_CHECKING:
    from identity.app import Settings

log = get_logger("identity.digest")

UNSUBSCRIBE = "unsubscribe"
OFF = "off"


class Digests:
    """The digest's requests to identity."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings) -> None:
        self.runtime = runtime
        self.lifetime = timedelta(days=settings.identity_unsubscribe_days)

    @staticmethod
    def _wanting() -> tuple:
        return (
            col(Account.role) == "parent",
            col(Account.verified_at).is_not(None),
            col(Account.digest) != OFF,
        )

    async def recipients(self, req: c.DigestRecipientsRequest) -> c.DigestRecipientsReply:
        """A page of the verified parents whose digest is not off, by id."""
        async with self.runtime.db.reader() as s:
            rows = (
                await s.execute(
                    select(col(Account.id), col(Account.digest), col(Account.language))
                    .where(*self._wanting(), col(Account.id) > req.after)
                    .order_by(col(Account.id))
                    .limit(req.limit)
                )
            ).all()
        recipients = [
            c.DigestRecipient(account_id=i, digest=d, language=lang if lang in ("en", "cy") else c.DEFAULT_LANGUAGE)
            for i, d, lang in rows
            if d in ("weekly", "daily")
        ]
        return c.DigestRecipientsReply(recipients=recipients, after=rows[-1][0] if len(rows) == req.limit else None)

    async def addresses(self, req: c.DigestAddressesRequest) -> c.DigestAddressesReply:
        """Where each parent's digest goes, with a new unsubscribe token each."""
        if not req.ids:
            return c.DigestAddressesReply(addresses=[])
        now = utcnow()
        found: list[c.DigestAddress] = []
        async with self.runtime.db.session() as s:
            rows = (
                await s.execute(
                    select(col(Account.id), col(Account.email), col(Account.name)).where(
                        col(Account.id).in_(req.ids), *self._wanting()
                    )
                )
            ).all()
            tokens = []
            for account_id, email, name in rows:
                token = new_token()
                tokens.append(
                    {
                        "account_id": account_id,
                        "purpose": UNSUBSCRIBE,
                        "token_hash": digest(token),
                        "expires_at": now + self.lifetime,
                        "created_at": now,
                    }
                )
                found.append(c.DigestAddress(id=account_id, email=email, name=name, unsubscribe_token=token))
            if tokens:
                await s.execute(insert(s, Token).values(tokens))
        return c.DigestAddressesReply(addresses=found)

    async def unsubscribe(self, req: c.UnsubscribeRequest) -> c.UnsubscribeReply:
        """Turn the digest of the token's account off; an unknown, altered or expired token
        changes nothing."""
        now = utcnow()
        async with self.runtime.unit_of_work() as uow:
            token = (
                await uow.session.execute(
                    select(Token).where(
                        col(Token.token_hash) == digest(req.token.strip()), col(Token.purpose) == UNSUBSCRIBE
                    )
                )
            ).scalar_one_or_none()
            account = await uow.session.get(Account, token.account_id) if token is not None else None
            if token is None or token.expires_at <= now or account is None:
                raise RpcFailure(c.E_INVALID_TOKEN, "This unsubscribe link is not valid: it is unknown or expired.")
            if account.digest != OFF:
                account.digest = OFF
                account.updated_at = now
                uow.session.add(account)
                # Announced like every change of preferences, in the same transaction.
                await announce(uow, account.id, preferences_of(account))
                log.info("digest_unsubscribed", account_id=account.id)
        return c.UnsubscribeReply(account_id=account.id)
