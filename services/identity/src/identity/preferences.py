"""A parent's preferences: how often the digest email comes and the language they read."""

from __future__ import annotations

import structlog
from sqlmodel import col, select

from contracts import identity as c
from contracts.base import utcnow
from contracts.kit.outbox import UnitOfWork
from contracts.kit.rpc import RpcFailure
from contracts.kit.runtime import ServiceRuntime
from identity.tables import Account

log = structlog.get_logger("identity.preferences")


def preferences_of(account: Account) -> c.Preferences:
    """The account's preferences; a value this version does not know reads as the default."""
    return c.Preferences.model_validate(
        {
            "digest": account.digest if account.digest in ("weekly", "daily", "off") else c.DEFAULT_DIGEST,
            "language": account.language if account.language in ("en", "cy") else c.DEFAULT_LANGUAGE,
        }
    )


async def announce(uow: UnitOfWork, account_id: str, preferences: c.Preferences) -> None:
    """`identity.preferences.changed.v1`, in the transaction of the change."""
    await uow.emit(
        c.PREFERENCES_CHANGED,
        c.PreferencesChanged(account_id=account_id, digest=preferences.digest, language=preferences.language),
        aggregate=f"account:{account_id}",
    )


class AccountPreferences:
    """Answers `rpc.identity.preferences.v1` and `rpc.identity.set_preferences.v1`."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def get(self, req: c.PreferencesRequest) -> c.Preferences:
        """The account's preferences."""
        async with self.runtime.db.reader() as s:
            account = await s.get(Account, req.account_id)
        if account is None:
            raise RpcFailure(c.E_NOT_FOUND, "No such account.")
        return preferences_of(account)

    async def set(self, req: c.SetPreferencesRequest) -> c.Preferences:
        """Change the preferences given; a new language is announced, as sessions carry it."""
        async with self.runtime.unit_of_work() as uow:
            account = (
                await uow.session.execute(select(Account).where(col(Account.id) == req.account_id).with_for_update())
            ).scalar_one_or_none()
            if account is None:
                raise RpcFailure(c.E_NOT_FOUND, "No such account.")
            before = preferences_of(account)
            if req.digest is not None:
                account.digest = req.digest
            if req.language is not None:
                account.language = req.language
            after = preferences_of(account)
            if after != before:
                account.updated_at = utcnow()
            if after != before:
                # Whoever composes the digest, or writes to the parent, follows the change.
                await announce(uow, account.id, after)
            if after.language != before.language:
                # Every gateway's cached sessions of the account say the old language.
                await uow.emit(
                    c.ACCOUNT_CHANGED, c.AccountChanged(account_id=account.id), aggregate=f"account:{account.id}"
                )
        if after != before:
            log.info("preferences_changed", account_id=req.account_id, digest=after.digest, language=after.language)
        return after
