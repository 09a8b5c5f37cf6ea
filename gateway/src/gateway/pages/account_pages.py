"""A parent's account page: their details, a copy of everything the portal holds about them
(the same file as `GET /api/v1/me/export`), and deleting the account (asks for the password)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, get_args

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Template

from contracts.identity import Digest, Language, Principal
from contracts.kit.i18n import N_
from contracts.kit.rpc import RpcError
from gateway import flows
from gateway.api.export import export_response
from gateway.auth import clear_session_cookie, client_ip, credentials, parents_only
from gateway.caches.links import get_links_cache
from gateway.caches.sessions import get_auth, token_key
from gateway.clients import Clients
from gateway.errors import ApiError
from gateway.pages.common import FieldErrors, as_api_error, flash, redirect, render, settings_of

PARENTS_ONLY = [parents_only]
WRONG_PASSWORD = "wrong_password"
# Longer than any password identity accepts; a longer one cannot be right.
MAX_PASSWORD_CHARS = 1024


async def _account_page(
    request: Request,
    clients: Clients,
    principal: Principal,
    *,
    errors: FieldErrors | None = None,
    status: int = 200,
    chosen: Mapping[str, str] | None = None,
) -> Template:
    preferences = await clients.identity.preferences(principal.account_id)
    if chosen:
        # A form sent back with an error shows what was chosen, not what is saved.
        preferences = preferences.model_copy(update=dict(chosen))
    return render(
        request,
        "pages/account.html",
        principal=principal,
        preferences=preferences,
        status=status,
        errors=errors or FieldErrors(),
    )


@get("/account", include_in_schema=False, guards=PARENTS_ONLY, operation_id="page_account")
async def account_page(
    request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal]
) -> Template:
    """The parent's name and address, their emails and language, "Download my data" and "Delete my account"."""
    return await _account_page(request, clients, principal)


T = TypeVar("T")

# What the form may send, as the values the contract takes.
DIGEST_CHOICES: dict[str, Digest] = {d: d for d in get_args(Digest)}
LANGUAGE_CHOICES: dict[str, Language] = {lang: lang for lang in get_args(Language)}


def _chosen(choices: dict[str, T], given: object) -> T | None:
    return choices.get(given) if isinstance(given, str) else None


@post(
    "/account/preferences",
    include_in_schema=False,
    guards=PARENTS_ONLY,
    status_code=200,
    operation_id="page_account_preferences",
)
async def account_preferences(
    state: State, request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal]
) -> Response[Any]:
    """Save how often the digest comes and the language; back to the account page in that language."""
    form = await request.form()
    digest = _chosen(DIGEST_CHOICES, form.get("digest"))
    language = _chosen(LANGUAGE_CHOICES, form.get("language"))
    if digest is None or language is None:
        errors = FieldErrors()
        if digest is None:
            errors["digest"] = N_("Choose how often the summary email comes")
        if language is None:
            errors["language"] = N_("Choose a language")
        chosen = {k: v for k, v in (("digest", digest), ("language", language)) if v is not None}
        return await _account_page(request, clients, principal, errors=errors, status=400, chosen=chosen)
    creds = credentials(request)
    await flows.set_preferences(
        clients,
        get_auth(state),
        principal,
        creds.token if creds is not None else None,
        digest=digest,
        language=language,
    )
    return redirect("/account", cookies=[flash(request, "preferences_saved")])


@get("/account/export", include_in_schema=False, guards=PARENTS_ONLY, operation_id="page_account_export")
async def account_export(clients: NamedDependency[Clients], principal: NamedDependency[Principal]) -> Response[bytes]:
    """ "Download my data": the export as a file, the same as the API's."""
    return export_response(await flows.export_data(clients, principal))


@post(
    "/account/delete",
    include_in_schema=False,
    guards=PARENTS_ONLY,
    status_code=200,
    operation_id="page_account_delete",
)
async def account_delete(
    state: State, request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal]
) -> Response[Any]:
    """Delete the account once the password is confirmed; then back to the sign-in page."""
    form = await request.form()
    password = form.get("password")
    if not isinstance(password, str) or not password:
        return await _account_page(
            request, clients, principal, errors=FieldErrors(password=N_("Enter your password")), status=400
        )
    if len(password) > MAX_PASSWORD_CHARS:
        password = password[: MAX_PASSWORD_CHARS + 1]  # wrong all the same; no need to carry the rest
    try:
        await flows.delete_account(
            clients, get_auth(state), get_links_cache(state), principal, password, client_ip(request)
        )
    except (ApiError, RpcError) as exc:
        err = as_api_error(exc)
        if err.code == WRONG_PASSWORD:
            errors = FieldErrors(password=N_("That password is not right. Your account has not been deleted."))
            return await _account_page(request, clients, principal, errors=errors, status=403)
        raise
    # The flow answered once every replica was sent the end of the sessions; drop this one's
    # entries now rather than when that event arrives.
    creds = credentials(request)
    if creds is not None:
        get_auth(state).cache.drop_token(token_key(creds.token))
    get_links_cache(state).forget(principal.account_id)
    return redirect("/login", cookies=[clear_session_cookie(settings_of(request)), flash(request, "account_deleted")])


ROUTES = [account_page, account_preferences, account_export, account_delete]
