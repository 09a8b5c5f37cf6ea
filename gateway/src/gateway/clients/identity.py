"""Identity as the gateway asks it: one typed method per request it makes (`contracts.identity`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import datetime

from contracts import identity
from contracts.kit.gather import ReadGatherer
from gateway.clients.transport import Transport

CONTACTS_BATCH = 1000  # identity's ContactsRequest takes at most this many ids


class IdentityClient:
    """Accounts, sessions and tokens."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        # Tokens this replica does not know yet, asked for together.
        self._sessions: ReadGatherer[identity.Principal | None] = ReadGatherer(
            self._read_sessions, max_keys=identity.MAX_SESSIONS
        )

    async def register(
        self,
        email: str,
        password: str,
        name: str,
        aup_version: str,
        client_ip: str = "",
        language: identity.Language | None = None,
    ) -> identity.RegisterReply:
        """A parent registers (the same reply whether the address was known or not)."""
        return await self._t.call(
            identity.REGISTER,
            identity.RegisterRequest(
                email=email,
                password=password,
                name=name,
                aup_version=aup_version,
                client_ip=client_ip,
                language=language,
            ),
        )

    async def check_password(self, password: str, email: str, name: str, client_ip: str = "") -> None:
        """Raises `weak_password` unless identity would accept this password for this person; with the
        caller's address, a refusal counts against it as a refused registration."""
        await self._t.call(
            identity.CHECK_PASSWORD,
            identity.CheckPasswordRequest(password=password, email=email, name=name, client_ip=client_ip),
        )

    async def verify(self, token: str) -> identity.VerifyReply:
        """Use a verification email's token."""
        return await self._t.call(identity.VERIFY, identity.VerifyRequest(token=token))

    async def unsubscribe(self, token: str) -> identity.UnsubscribeReply:
        """A digest's one-click unsubscribe: the token's account's digest becomes off."""
        return await self._t.call(identity.UNSUBSCRIBE, identity.UnsubscribeRequest(token=token))

    async def resend_verification(self, email: str) -> None:
        """A fresh verification link, if that address waits for one."""
        await self._t.call(identity.RESEND_VERIFICATION, identity.EmailRequest(email=email))

    async def login(self, email: str, password: str, client_ip: str) -> identity.LoginReply:
        """A new session."""
        return await self._t.call(
            identity.LOGIN, identity.LoginRequest(email=email, password=password, client_ip=client_ip)
        )

    async def logout(self, token: str) -> None:
        """End one session."""
        await self._t.call(identity.LOGOUT, identity.LogoutRequest(token=token))

    async def session(self, token: str) -> identity.Principal | None:
        """Who holds `token`; None when it is no live session (or cannot be one). Asked together
        with the other tokens this replica does not know yet (one request, one query)."""
        if not token or len(token) > identity.MAX_TOKEN_LENGTH:
            # Never sent: one token identity refuses would refuse the whole request.
            return None
        return await self._sessions.one(token)

    async def _read_sessions(self, tokens: list[str]) -> dict[str, identity.Principal | None]:
        reply = await self._t.call(identity.SESSIONS, identity.SessionsRequest(tokens=tokens))
        return dict(zip(tokens, reply.sessions, strict=True))

    async def password_reset(self, email: str) -> None:
        """A reset link, if that address has an account."""
        await self._t.call(identity.PASSWORD_RESET, identity.EmailRequest(email=email))

    async def password_reset_confirm(self, token: str, password: str) -> identity.PasswordChangedReply:
        """Set a new password with a reset token; every session of the account ends."""
        return await self._t.call(
            identity.PASSWORD_RESET_CONFIRM, identity.PasswordResetConfirm(token=token, password=password)
        )

    async def delete_account(self, account_id: str, password: str, client_ip: str = "") -> identity.AccountDeletedReply:
        """A parent deletes their account with their password; every session of it ends."""
        return await self._t.call(
            identity.DELETE_ACCOUNT,
            identity.DeleteAccountRequest(account_id=account_id, password=password, client_ip=client_ip),
        )

    async def contacts(self, account_ids: Iterable[str]) -> dict[str, identity.Contact]:
        """Names and addresses by account id (ids identity no longer knows are left out)."""
        ids = list(dict.fromkeys(account_ids))
        if not ids:
            return {}
        replies = await asyncio.gather(
            *(
                self._t.call(identity.CONTACTS, identity.ContactsRequest(ids=ids[i : i + CONTACTS_BATCH]))
                for i in range(0, len(ids), CONTACTS_BATCH)
            )
        )
        return {c.id: c for reply in replies for c in reply.contacts}

    async def parent_activity(self, account_ids: Sequence[str], since: datetime) -> str:
        """One character per account, in their order: `identity.ACTIVE` (signed in or seen since
        `since`), `identity.SIGNED_IN` (before only) or `identity.NEVER_SIGNED_IN`."""
        step = identity.MAX_ACTIVITY_IDS
        replies = await asyncio.gather(
            *(
                self._t.call(
                    identity.PARENT_ACTIVITY,
                    identity.ParentActivityRequest(ids=list(account_ids[i : i + step]), since=since),
                )
                for i in range(0, len(account_ids), step)
            )
        )
        return "".join(r.states for r in replies)

    async def staff_list(self, scope: identity.AdminScope) -> list[identity.StaffMember]:
        """The members of staff an admin with `scope` may see, disabled ones included."""
        return (await self._t.call(identity.STAFF_LIST, identity.StaffListRequest(scope=scope))).staff

    async def set_staff_access(
        self, account_id: str, *, disabled: bool, scope: identity.AdminScope, actor_id: str
    ) -> identity.StaffMember:
        """Disable a member of staff within `scope` (their sessions end) or enable them again."""
        return await self._t.call(
            identity.SET_STAFF_ACCESS,
            identity.StaffAccessRequest(account_id=account_id, disabled=disabled, scope=scope, actor_id=actor_id),
        )

    async def preferences(self, account_id: str) -> identity.Preferences:
        """How often the account's digest comes, and its language."""
        return await self._t.call(identity.PREFERENCES, identity.PreferencesRequest(account_id=account_id))

    async def set_preferences(
        self,
        account_id: str,
        *,
        digest: identity.Digest | None = None,
        language: identity.Language | None = None,
    ) -> identity.Preferences:
        """Change the preferences given; the others stay."""
        return await self._t.call(
            identity.SET_PREFERENCES,
            identity.SetPreferencesRequest(account_id=account_id, digest=digest, language=language),
        )

    async def export(self, account_id: str) -> identity.AccountExport:
        """Everything identity holds about an account (never a hash or a token), for its own export."""
        return await self._t.call(identity.EXPORT, identity.ExportRequest(account_id=account_id))
