"""Validated sessions, kept per replica for a few minutes, and identity's events that end them.

Identity answers `contracts.identity.SESSION` for a token; the answer is kept, keyed by a hash
of the token, and dropped as soon as `identity.session.revoked.v1` names the session (or its
account), so that logging out or changing a password takes effect on every replica at once,
or when `identity.account.changed.v1` says what the account stands for changed (a member of
staff's school or role).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Coroutine
from typing import Any

from litestar.datastructures import State
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts import identity
from contracts.identity import Principal
from contracts.kit.logs import get_logger
from gateway.clients import IdentityClient
from gateway.settings import GatewaySettings

log = get_logger("gateway.caches.sessions")

STATE_KEY = "auth"


def token_key(token: str) -> str:
    """The cache key of a token: a hash, so no raw token sits in memory longer than a request."""
    return hashlib.sha256(token.encode()).hexdigest()


# -- the cache --------------------------------------------------------------------------------


# A cached principal is kept as a tuple of its fields, with strings, numbers and None only:
# the garbage collector stops tracking such tuples, so a cache of 100,000 sessions does not
# lengthen every full collection (each one a pause of every request in flight).
_FIELDS = tuple(Principal.model_fields)
_ACCOUNT = _FIELDS.index("account_id")
_SESSION = _FIELDS.index("session_id")
# Principals built from cached entries, reused while their entry is the one cached: a session
# that keeps calling (a page's requests, an app polling) gets the same frozen principal rather
# than a new one a request. Bounded (few sessions call many times a minute), and kept apart
# from the entries so that those stay untracked by the garbage collector.
REUSED_PRINCIPALS = 1024


class SessionCache:
    """Validated sessions by token hash, for a few minutes at most."""

    # `generation` changes with every revocation: an answer from identity asked for before a
    # revocation arrived is not cached, since it may predate it.

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        # False until the revocation subscription exists: without it nothing may be cached.
        self.live = False
        self._entries: dict[str, tuple[float, tuple[Any, ...]]] = {}
        self._by_session: dict[str, str] = {}
        self._by_account: dict[str, tuple[str, ...]] = {}
        # token hash -> (the entry it was built from, its principal): valid while that very
        # entry is cached, so a revocation, expiry or new answer is seen as before.
        self._built: dict[str, tuple[tuple[float, tuple[Any, ...]], Principal]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Principal | None:
        """The cached principal of a token hash, if still fresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._remove(key)
            return None
        built = self._built.get(key)
        if built is not None and built[0] is entry:
            return built[1]
        principal = Principal.model_construct(**dict(zip(_FIELDS, entry[1], strict=True)))
        if len(self._built) >= REUSED_PRINCIPALS:
            self._built.pop(next(iter(self._built)))  # the oldest: dicts keep insertion order
        self._built[key] = (entry, principal)
        return principal

    def put(self, key: str, principal: Principal, generation: int) -> bool:
        """Cache an answer asked for at `generation`; False when it may be stale or is not kept."""
        ttl = min(self.ttl, float(principal.expires_in))
        if not self.live or generation != self.generation or ttl <= 0 or self.max_entries <= 0:
            return False
        self._remove(key)
        while len(self._entries) >= self.max_entries:
            self._remove(next(iter(self._entries)))  # the oldest: dicts keep insertion order
        # Up to a fifth shorter at random: sessions cached together (a morning's first visits)
        # do not all go back to identity in the same second.
        ttl *= 1 - 0.2 * random.random()  # noqa: S311 - jitter, not a secret
        self._entries[key] = (time.monotonic() + ttl, tuple(getattr(principal, f) for f in _FIELDS))
        self._by_session[principal.session_id] = key
        self._by_account[principal.account_id] = (*self._by_account.get(principal.account_id, ()), key)
        return True

    def _remove(self, key: str) -> None:
        self._built.pop(key, None)
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        session_id, account_id = entry[1][_SESSION], entry[1][_ACCOUNT]
        if self._by_session.get(session_id) == key:
            del self._by_session[session_id]
        keys = tuple(k for k in self._by_account.get(account_id, ()) if k != key)
        if keys:
            self._by_account[account_id] = keys
        else:
            self._by_account.pop(account_id, None)

    def drop_token(self, key: str) -> None:
        """Forget one token (this replica's own logout)."""
        self.generation += 1
        self._remove(key)

    def drop_sessions(self, session_ids: list[str]) -> None:
        """Forget the given sessions."""
        self.generation += 1
        for session_id in session_ids:
            key = self._by_session.get(session_id)
            if key is not None:
                self._remove(key)

    def drop_account(self, account_id: str) -> None:
        """Forget every session of an account."""
        self.generation += 1
        for key in list(self._by_account.get(account_id, ())):
            self._remove(key)

    def clear(self) -> None:
        """Forget everything (after a reconnect: revocations may have been missed)."""
        self.generation += 1
        self._entries.clear()
        self._built.clear()
        self._by_session.clear()
        self._by_account.clear()


# -- revocations ----------------------------------------------------------------------------


class SessionAuth:
    """The per-process session cache, fed by identity and emptied by its revocation events."""

    def __init__(self, settings: GatewaySettings, identity: IdentityClient) -> None:
        self.settings = settings
        self.identity = identity
        self.cache = SessionCache(settings.session_cache_seconds, settings.session_cache_entries)
        self._session_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._account_waiters: dict[str, set[asyncio.Future[None]]] = {}
        # Accounts whose sessions all ended lately: their event may arrive before the reply.
        self._recent_accounts: dict[str, float] = {}

    # Hooks of gateway.clients.nats.nats_lifespan.

    async def subscribe(self, nc: NatsClient) -> None:
        """Listen to revocation events (the `on_connect` hook)."""
        # A core subscription, not a durable consumer: every replica must hear every event,
        # and core subscribers receive what JetStream stores as well.
        try:
            await nc.subscribe(identity.SESSION_REVOKED, cb=self._on_revoked)
            await nc.subscribe(identity.ACCOUNT_CHANGED, cb=self._on_account_changed)
        except Exception as exc:  # noqa: BLE001 - the gateway still works, asking identity each time
            log.error("session_revocations_not_subscribed", error=type(exc).__name__)
            return
        self.cache.clear()
        self.cache.live = True
        log.info("session_revocations_subscribed")

    async def on_reconnect(self) -> None:
        """Empty the cache (the `on_reconnect` hook)."""
        # Revocations sent while we were away were missed: trust nothing cached before.
        self.cache.clear()
        log.info("session_cache_cleared", reason="nats_reconnected")

    async def _on_revoked(self, msg: Msg) -> None:
        try:
            event = identity.SessionRevoked.model_validate_json(msg.data)
        except ValidationError:
            # Unreadable: the safe reading is "anything may have been revoked".
            self.cache.clear()
            log.warning("session_revoked_unreadable")
            return
        if event.all_sessions:
            self.cache.drop_account(event.account_id)
        if event.session_ids:
            self.cache.drop_sessions(event.session_ids)
        if not event.all_sessions and not event.session_ids:
            self.cache.drop_account(event.account_id)
        self._wake(event)

    async def _on_account_changed(self, msg: Msg) -> None:
        try:
            event = identity.AccountChanged.model_validate_json(msg.data)
        except ValidationError:
            self.cache.clear()
            log.warning("account_changed_unreadable")
            return
        self.cache.drop_account(event.account_id)

    def _wake(self, event: identity.SessionRevoked) -> None:
        for session_id in event.session_ids:
            for fut in self._session_waiters.pop(session_id, ()):
                if not fut.done():
                    fut.set_result(None)
        if event.all_sessions:
            now = time.monotonic()
            self._recent_accounts[event.account_id] = now
            for account_id, seen in list(self._recent_accounts.items()):
                if now - seen > 30:
                    del self._recent_accounts[account_id]
            for fut in self._account_waiters.pop(event.account_id, ()):
                if not fut.done():
                    fut.set_result(None)

    async def until_revoked(self, action: Coroutine[Any, Any, Any], *, session_id: str) -> Any:
        """Run `action` (an rpc ending session `session_id`), then wait briefly for its event."""
        # Identity replies before its outbox relays the event; answering only once the event
        # is back means every replica has been sent it too, so the caller's next request,
        # wherever it lands, finds the session gone. Registered before the action: the event
        # may overtake the rpc's reply.
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._session_waiters.setdefault(session_id, set()).add(fut)
        try:
            result = await action
            await self._wait(fut)
            return result
        finally:
            waiters = self._session_waiters.get(session_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._session_waiters[session_id]

    async def until_account_revoked(self, action: Coroutine[Any, Any, Any]) -> Any:
        """Run `action` (an rpc ending every session of the account its reply names), then wait
        briefly for that account's revocation event."""
        result = await action
        account_id = result.account_id
        if account_id in self._recent_accounts:
            return result  # the event overtook the reply
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._account_waiters.setdefault(account_id, set()).add(fut)
        try:
            await self._wait(fut)
            return result
        finally:
            waiters = self._account_waiters.get(account_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._account_waiters[account_id]

    async def _wait(self, fut: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.settings.revocation_wait_seconds)
        except TimeoutError:
            log.warning("session_revocation_not_seen", waited_s=self.settings.revocation_wait_seconds)
        finally:
            if not fut.done():
                fut.cancel()

    async def resolve(self, token: str) -> tuple[Principal | None, bool]:
        """The principal of `token` or None, and whether identity was asked for it."""
        if not token or len(token) > identity.MAX_TOKEN_LENGTH:
            return None, False
        key = token_key(token)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, False
        generation = self.cache.generation
        principal = await self.identity.session(token)
        if principal is None:
            return None, True
        self.cache.put(key, principal, generation)
        return principal, True


def get_auth(state: State) -> SessionAuth:
    """The application's `SessionAuth`."""
    return state[STATE_KEY]
