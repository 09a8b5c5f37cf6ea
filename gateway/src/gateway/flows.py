"""The gateway's cross-service flows: what it composes from more than one service, by name.

Each flow is asked by an API route and a web page alike. A service's error is let through as
`RpcError`, for the caller to answer (`gateway.errors.http_error`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from contracts import identity, linking
from contracts.addresses import same_email
from contracts.identity import Principal
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcError
from gateway.caches.links import LinksCache
from gateway.caches.overview import OverviewReader
from gateway.caches.sessions import SessionAuth, token_key
from gateway.clients import Clients, IdentityClient, LinkingClient, StaffLinking
from gateway.models import AccountExport, InvitationRow, ParentRow, PupilRow

log = get_logger("gateway.flows")

# How long registration waits for the default policy's version before going ahead without it.
AUP_VERSION_TIMEOUT = 1.0
# The second round of a bar checks whoever linked while the first ran. Once the first round's
# bar is committed the address can link no more, so anyone linking later is someone else.
BAR_ROUNDS = 2


# -- registering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """A parent's registration, checked for form by the caller."""

    email: str
    password: str
    name: str
    code: str | None = None
    relationship: linking.Relationship | None = None
    client_ip: str = ""


async def default_aup_version(linking_client: LinkingClient) -> str:
    """The version of the default acceptable-use policy ("" when linking cannot say: the
    registration still goes ahead, and the version accepted is recorded as unknown)."""
    try:
        reply = await linking_client.aup(timeout=AUP_VERSION_TIMEOUT)
    except RpcError as exc:
        log.warning("aup_version_unavailable", error=exc.code)
        return ""
    return reply.version[:64]


async def register(clients: Clients, r: Registration) -> None:
    """Register a parent (identity), and with a child's code hold that child for the new
    account until its address is verified (linking)."""
    aup_version = None
    # A parent who comes with a Welsh school's code starts in Welsh (they may change it).
    language: identity.Language | None = None
    if r.code:
        # A bad code answers 404 and a full one 409 with nothing created (docs/http-api.md),
        # so the password and the code are checked before identity creates the account.
        await clients.identity.check_password(r.password, r.email, r.name, r.client_ip)
        check = await clients.linking.redeem(
            linking.RedeemRequest(code=r.code, dry_run=True, accept_aup=True, email=r.email, client_ip=r.client_ip)
        )
        aup_version = check.aup.version if check.aup else None
        language = check.school_language
    reply = await clients.identity.register(
        r.email,
        r.password,
        r.name,
        aup_version if aup_version is not None else await default_aup_version(clients.linking),
        r.client_ip,
        language,
    )
    if r.code and reply.created:
        # Only a new account is linked here, awaiting its verification. An address that
        # already has an account gets "you already have an account" and nothing else:
        # otherwise anyone holding a code could attach a child to a stranger's account. Its
        # owner signs in and adds the child with the same code.
        await clients.linking.redeem(
            linking.RedeemRequest(
                code=r.code,
                parent_id=reply.parent_id,
                relationship=r.relationship,
                verified=False,
                accept_aup=True,
                email=r.email,
                client_ip=r.client_ip,
            )
        )


# -- deleting an account ----------------------------------------------------------------------


async def delete_account(
    clients: Clients, auth: SessionAuth, links: LinksCache, principal: Principal, password: str, client_ip: str = ""
) -> None:
    """A parent deletes their own account (identity checks the password: `wrong_password`
    changes nothing; a member of staff gets `not_a_parent`).

    Identity deletes the account and, in the same transaction, ends every session and records
    `identity.account.deleted.v1`; linking and notify apply that event through their durable
    consumers whenever they are up (ending the links, erasing addresses and emails). This
    returns once every replica was sent the end of the sessions (`until_account_revoked`),
    so the token answers 401 wherever it is used next.
    """
    await auth.until_account_revoked(clients.identity.delete_account(principal.account_id, password, client_ip))
    # The parent can no longer sign in; their children leave this replica's memory now
    # rather than when linking's removal events arrive.
    auth.cache.drop_account(principal.account_id)
    links.forget(principal.account_id)
    log.info("account_deleted", account_id=principal.account_id)


# -- a parent's overview -------------------------------------------------------------------------


async def set_preferences(
    clients: Clients,
    auth: SessionAuth,
    principal: Principal,
    token: str | None,
    *,
    digest: identity.Digest | None = None,
    language: identity.Language | None = None,
) -> identity.Preferences:
    """Change the caller's preferences. Sessions carry the language: after a change of it this
    replica forgets the caller's cached session (the others hear identity's event), so the next
    page is in the new language wherever it is served."""
    changed = await clients.identity.set_preferences(principal.account_id, digest=digest, language=language)
    if token is not None and changed.language != principal.language:
        auth.cache.drop_token(token_key(token))
    return changed


async def parent_overview(links: LinksCache, overviews: OverviewReader, parent_id: str) -> bytes:
    """`{"children": [...]}`: the overview of every child the parent may see now (linking's
    answer, remembered), from overview's (remembered) JSON."""
    return await overviews.read(parent_id, await links.active(parent_id))


async def child_overview(links: LinksCache, overviews: OverviewReader, parent_id: str, pupil_id: str) -> bytes | None:
    """One child's overview JSON; None unless the child is linked to this parent now."""
    if pupil_id not in await links.active(parent_id):
        return None
    return await overviews.read_one(parent_id, pupil_id)


# -- a person's own data ------------------------------------------------------------------------


async def export_data(clients: Clients, principal: Principal) -> AccountExport:
    """Everything the portal holds about the caller (`GET /me/export`): identity's account and
    sessions; for a parent also linking's links and audit rows naming them, and notify's emails
    to their account or address. A member of staff gets their own account and sessions only:
    the pupils and parents they deal with are the school's data, not theirs."""
    account = await clients.identity.export(principal.account_id)
    if account.role != "parent":
        return AccountExport.of(account)
    # The address identity holds now, not the session's copy of it.
    links, emails = await asyncio.gather(
        clients.linking.export(account.id), clients.notify.export(account.id, account.email)
    )
    return AccountExport.of(account, links, emails)


# -- a class's pupils ---------------------------------------------------------------------------


async def pupil_rows(identity: IdentityClient, reply: linking.ClassPupilsReply) -> list[PupilRow]:
    """A class's pupils as the API answers them, parents' names and addresses filled in from
    identity (linking holds none), asked in one batch."""
    contacts = await identity.contacts(p.parent_id for pupil in reply.pupils for p in pupil.parents)
    rows = []
    for pupil in reply.pupils:
        parents = []
        for link in pupil.parents:
            contact = contacts.get(link.parent_id)
            parents.append(
                ParentRow(
                    parent_id=link.parent_id,
                    name=contact.name if contact else None,
                    email=contact.email if contact else None,
                    relationship=link.relationship,
                    status=link.status,
                    since=link.since,
                    last_signed_in_at=contact.last_signed_in_at if contact else None,
                )
            )
        rows.append(
            PupilRow(
                pupil_id=pupil.pupil_id,
                first_name=pupil.first_name,
                last_name=pupil.last_name,
                code_expires_at=pupil.code_expires_at,
                parents=parents,
                invitations=[InvitationRow.of(i) for i in pupil.invitations],
            )
        )
    return rows


# -- safeguarding bars --------------------------------------------------------------------------


async def _holders(identity: IdentityClient, parent_ids: list[str], email: str) -> list[str]:
    contacts = await identity.contacts(parent_ids)
    return [pid for pid in parent_ids if pid in contacts and same_email(contacts[pid].email, email)]


async def add_bar(
    staff: StaffLinking, identity: IdentityClient, links: LinksCache, pupil_id: str, email: str, reason: str
) -> str:
    """Bar `email` from a pupil; the bar's id.

    Linking holds no parents' addresses, so the bar is composed here: linking names the pupil's
    parents, identity gives their addresses, and linking is told which of them have the barred
    one and ends their links (it stays the one that decides). Anyone who linked in between is
    named back by linking and checked in another round. The links that ended are gone on every
    replica before this returns (`LinksCache.removals`).
    """
    checked = await staff.pupil_parents(pupil_id)
    holders = await _holders(identity, checked, email)
    async with links.removals() as removed:
        for _ in range(BAR_ROUNDS):
            reply = await staff.add_bar(pupil_id, email, reason, parent_ids=holders, checked_parent_ids=checked)
            for parent_id in reply.removed_parent_ids:
                removed.expect(parent_id, pupil_id)
            if not reply.unchecked_parent_ids:
                break
            checked = [*checked, *reply.unchecked_parent_ids]
            holders = await _holders(identity, reply.unchecked_parent_ids, email)
    return reply.bar_id


# -- disabling staff ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaffOfScope:
    """The members of staff an admin may disable, with the names of the schools they are at."""

    staff: list[identity.StaffMember]
    schools: dict[str, str]


async def admin_scope(staff: StaffLinking, principal: identity.Principal) -> tuple[identity.AdminScope, dict[str, str]]:
    """Whose accounts an admin acts on: a school admin's school; a trust admin's trust (its trust
    admins) and the trust's schools, which linking knows. With the schools' names by id."""
    schools = {s.school_id: s.name for s in await staff.schools()}
    if principal.role == "trust_admin":
        trust_ids = [principal.trust_id] if principal.trust_id else []
        return identity.AdminScope(school_ids=list(schools), trust_ids=trust_ids), schools
    school_ids = [principal.school_id] if principal.role == "school_admin" and principal.school_id else []
    return identity.AdminScope(school_ids=school_ids), schools


async def staff_of_scope(clients: Clients, staff: StaffLinking, principal: identity.Principal) -> StaffOfScope:
    """Every member of staff within the admin's scope (identity's accounts, linking's schools)."""
    scope, schools = await admin_scope(staff, principal)
    return StaffOfScope(await clients.identity.staff_list(scope), schools)


async def set_staff_access(
    clients: Clients,
    auth: SessionAuth,
    staff: StaffLinking,
    principal: identity.Principal,
    account_id: str,
    *,
    disabled: bool,
) -> identity.StaffMember:
    """Disable a member of staff of the admin's scope, answering once every gateway replica was
    sent the event ending their sessions; or enable them again. Anyone outside the scope: 404."""
    scope, _ = await admin_scope(staff, principal)
    change = clients.identity.set_staff_access(
        account_id, disabled=disabled, scope=scope, actor_id=principal.account_id
    )
    if disabled:
        member: identity.StaffMember = await auth.until_account_revoked(change)
        return member
    return await change
