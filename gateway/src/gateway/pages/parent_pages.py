"""Parents' pages: home (a switcher between their children and each child's card), linking a
child from a code's URL or a typed code, and unlinking a child."""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Template

from contracts import linking
from contracts.identity import Principal
from contracts.kit.i18n import N_
from contracts.kit.rpc import RpcError
from gateway import flows
from gateway.auth import client_ip, parents_only
from gateway.caches.links import get_links_cache
from gateway.caches.overview import get_overview_reader
from gateway.clients import Clients
from gateway.errors import not_found
from gateway.pages.common import RELATIONSHIPS, FieldErrors, as_api_error, flash, redirect, render

PARENTS_ONLY = [parents_only]


async def parent_home(request: Request, clients: Clients, principal: Principal, child: str | None) -> Template:
    """The parent's home page: every linked child one tap away, the chosen child's card."""
    state = request.app.state
    views = await clients.linking.children(principal.account_id)
    firsts = [v.first_name for v in views]
    # Two children of the same first name are told apart by their last name too.
    children = [
        {
            **v.model_dump(),
            "label": v.first_name if firsts.count(v.first_name) == 1 else f"{v.first_name} {v.last_name}",
        }
        for v in views
    ]
    selected = next((c for c in children if c["pupil_id"] == child), children[0] if children else None)
    overview = None
    if selected is not None and selected["status"] == "linked":
        links, overviews = get_links_cache(state), get_overview_reader(state)
        data = await flows.child_overview(links, overviews, principal.account_id, selected["pupil_id"])
        # None: linked a moment ago and not yet in this replica's view, shown without numbers.
        overview = json.loads(data) if data is not None else None
    return render(
        request,
        "pages/parent_home.html",
        principal=principal,
        children=children,
        selected=selected,
        overview=overview,
        names={"pupil": {c["pupil_id"]: c["label"] for c in children}},
    )


def _relationship_ok(value: str) -> bool:
    return value in dict(RELATIONSHIPS)


async def _preview(clients: Clients, request: Request, principal: Principal | None, code: str) -> linking.CodePreview:
    # The guessing limits count a parent's failed previews against them, as the API's does.
    parent_id = principal.account_id if principal and principal.role == "parent" else None
    return await clients.linking.preview_code(code[:256], client_ip(request), parent_id)


@get("/link", include_in_schema=False, operation_id="page_link_typed")
async def link_typed(code: str | None = None) -> Response[Any]:
    """A code typed on the "not valid" page: on to its own page."""
    cleaned = "".join(ch for ch in (code or "") if ch.isalnum())[:64]
    return redirect(f"/link/{cleaned}" if cleaned else "/children/add")


@get("/link/{code:str}", include_in_schema=False, operation_id="page_link")
async def link_page(
    request: Request, clients: NamedDependency[Clients], code: str, maybe_principal: NamedDependency[Principal | None]
) -> Template:
    """A scanned QR code or an invitation's link: "Link to Amy, Year 3, Oak School?"."""
    try:
        preview = await _preview(clients, request, maybe_principal, code[:256])
    except RpcError as exc:
        err = as_api_error(exc)
        if err.status_code in (404, 429):
            return render(
                request, "pages/link_invalid.html", principal=maybe_principal, status=err.status_code, detail=err.detail
            )
        raise
    return render(
        request,
        "pages/link.html",
        principal=maybe_principal,
        code=code,
        child=preview,
        values={},
        errors={},
        relationships=RELATIONSHIPS,
        school_language=preview.school_language,
    )


@get("/children/add", include_in_schema=False, guards=PARENTS_ONLY, operation_id="page_add_child")
async def add_child_page(request: Request, principal: NamedDependency[Principal]) -> Template:
    """ "Add a child": type the code from a QR card or an invitation email."""
    return render(request, "pages/add_child.html", principal=principal, values={}, errors={})


@post(
    "/children/add",
    include_in_schema=False,
    guards=PARENTS_ONLY,
    status_code=200,
    operation_id="page_add_child_preview",
)
async def add_child_preview(
    request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal]
) -> Template:
    """Show whose code it is before anything is linked."""
    form = await request.form()
    code = str(form.get("code") or "").strip()[:64]
    if not code:
        errors = FieldErrors(code=N_("Enter the code"))
        return render(request, "pages/add_child.html", principal=principal, status=400, values={}, errors=errors)
    try:
        preview = await _preview(clients, request, principal, code)
    except RpcError as exc:
        err = as_api_error(exc)
        if err.status_code in (404, 429):
            return render(
                request,
                "pages/add_child.html",
                principal=principal,
                status=err.status_code,
                values={"code": code},
                errors=FieldErrors(code=err.detail),
            )
        raise
    return render(
        request,
        "pages/link.html",
        principal=principal,
        code=code,
        child=preview,
        values={},
        errors={},
        relationships=RELATIONSHIPS,
    )


@post(
    "/children/confirm",
    include_in_schema=False,
    guards=PARENTS_ONLY,
    status_code=200,
    operation_id="page_add_child_confirm",
)
async def add_child_confirm(
    state: State, request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal]
) -> Response[Any]:
    """Link the child with the code, the relationship and (when needed) the school's policy."""
    form = await request.form()
    code = str(form.get("code") or "").strip()[:64]
    values = {"relationship": str(form.get("relationship") or ""), "accept_aup": form.get("accept_aup") == "yes"}

    async def again(errors: FieldErrors, message: str | None = None, status: int = 400) -> Template:
        preview = await _preview(clients, request, principal, code)
        errors = FieldErrors({k: v.replace("the child", preview.first_name) for k, v in errors.items()})
        return render(
            request,
            "pages/link.html",
            principal=principal,
            status=status,
            code=code,
            child=preview,
            values=values,
            errors=errors,
            message=message,
            relationships=RELATIONSHIPS,
        )

    if not _relationship_ok(str(values["relationship"])):
        return await again(FieldErrors(relationship=N_("Choose your relationship to the child")))
    try:
        reply = await clients.linking.redeem(
            linking.RedeemRequest(
                code=code or "-",
                parent_id=principal.account_id,
                relationship=values["relationship"],
                verified=True,
                accept_aup=values["accept_aup"],
                email=principal.email,
                client_ip=client_ip(request),
            )
        )
    except RpcError as exc:
        err = as_api_error(exc)
        if exc.code == linking.E_AUP_REQUIRED:
            return await again(
                FieldErrors(accept_aup=N_("Accept the school's acceptable-use policy to link the child")), status=422
            )
        if err.status_code in (409, 422):
            return await again(FieldErrors(), err.detail, err.status_code)
        raise
    get_links_cache(state).forget(principal.account_id)
    assert reply.child is not None  # a redemption that is not a dry run names its link
    notice = flash(request, "child_linked" if reply.created else "child_already_linked", pupil=reply.child.pupil_id)
    return redirect(f"/?child={reply.child.pupil_id}", cookies=[notice])


async def _my_child(clients: Clients, principal: Principal, pupil_id: str) -> linking.ChildView:
    found = next((c for c in await clients.linking.children(principal.account_id) if c.pupil_id == pupil_id), None)
    if found is None:
        raise not_found(N_("That child is not linked to your account."))
    return found


@get("/children/{pupil_id:str}/unlink", include_in_schema=False, guards=PARENTS_ONLY, operation_id="page_unlink_child")
async def unlink_page(
    request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal], pupil_id: str
) -> Template:
    """Asks before a parent stops seeing a child."""
    child = await _my_child(clients, principal, pupil_id)
    return render(request, "pages/unlink.html", principal=principal, child=child)


@post(
    "/children/{pupil_id:str}/unlink",
    include_in_schema=False,
    guards=PARENTS_ONLY,
    status_code=200,
    operation_id="page_unlink_child_submit",
)
async def unlink_submit(
    state: State,
    request: Request,
    clients: NamedDependency[Clients],
    principal: NamedDependency[Principal],
    pupil_id: str,
) -> Response[Any]:
    """Unlink the child; the school can invite the parent again."""
    await _my_child(clients, principal, pupil_id)
    await clients.linking.unlink(principal.account_id, pupil_id)
    get_links_cache(state).forget(principal.account_id)
    return redirect("/", cookies=[flash(request, "child_unlinked")])


ROUTES = [link_typed, link_page, add_child_page, add_child_preview, add_child_confirm, unlink_page, unlink_submit]
