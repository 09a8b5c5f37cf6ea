"""Parents' pages: home (a switcher between their children and each child's card), linking a
child from a code's URL or a typed code, and unlinking a child."""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Template

from contracts.identity import Principal
from contracts.kit.rpc import RpcError
from gateway import code_routes, parent_routes
from gateway.auth import require_role
from gateway.errors import ApiError
from gateway.pages.common import RELATIONSHIPS, FieldErrors, redirect, render
from gateway.rpc import api_error

PARENTS_ONLY = [require_role("parent")]


async def parent_home(state: State, request: Request, principal: Principal, child: str | None) -> Template:
    """The parent's home page: every linked child one tap away, the chosen child's card."""
    children = await parent_routes.my_children.fn(state=state, principal=principal)
    selected = next((c for c in children if c["pupil_id"] == child), children[0] if children else None)
    overview = None
    if selected is not None and selected["status"] == "linked":
        try:
            overview = json.loads(await parent_routes.child_overview_json(state, principal, selected["pupil_id"]))
        except ApiError:
            overview = None  # linked a moment ago and not yet in this replica's view: shown without numbers
    firsts = [c["first_name"] for c in children]
    for c in children:
        # Two children of the same first name are told apart by their last name too.
        c["label"] = c["first_name"] if firsts.count(c["first_name"]) == 1 else f"{c['first_name']} {c['last_name']}"
    return render(request, "pages/parent_home.html", principal=principal, children=children, selected=selected, overview=overview)


def _relationship_ok(value: str) -> bool:
    return value in dict(RELATIONSHIPS)


async def _preview(state: State, request: Request, principal: Principal | None, code: str) -> Any:
    return await code_routes.preview_code.fn(state=state, request=request, code=code, maybe_principal=principal)


@get("/link", include_in_schema=False)
async def link_typed(code: str | None = None) -> Response[Any]:
    """A code typed on the "not valid" page: on to its own page."""
    cleaned = "".join(ch for ch in (code or "") if ch.isalnum())[:64]
    return redirect(f"/link/{cleaned}" if cleaned else "/children/add")


@get("/link/{code:str}", include_in_schema=False)
async def link_page(state: State, request: Request, code: str, maybe_principal: NamedDependency[Principal | None]) -> Template:
    """A scanned QR code or an invitation's link: "Link to Amy, Year 3, Oak School?"."""
    try:
        preview = await _preview(state, request, maybe_principal, code[:256])
    except RpcError as exc:
        err = api_error(exc)
        if err.status_code in (404, 429):
            return render(request, "pages/link_invalid.html", principal=maybe_principal, status=err.status_code, detail=err.detail)
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
    )


@get("/children/add", include_in_schema=False, guards=PARENTS_ONLY)
async def add_child_page(request: Request, principal: NamedDependency[Principal]) -> Template:
    """"Add a child": type the code from a QR card or an invitation email."""
    return render(request, "pages/add_child.html", principal=principal, values={}, errors={})


@post("/children/add", include_in_schema=False, guards=PARENTS_ONLY, status_code=200)
async def add_child_preview(state: State, request: Request, principal: NamedDependency[Principal]) -> Template:
    """Show whose code it is before anything is linked."""
    form = await request.form()
    code = str(form.get("code") or "").strip()[:64]
    if not code:
        return render(request, "pages/add_child.html", principal=principal, status=400, values={}, errors=FieldErrors(code="Enter the code"))
    try:
        preview = await _preview(state, request, principal, code)
    except RpcError as exc:
        err = api_error(exc)
        if err.status_code in (404, 429):
            return render(
                request, "pages/add_child.html", principal=principal, status=err.status_code, values={"code": code},
                errors=FieldErrors(code=err.detail),
            )
        raise
    return render(
        request, "pages/link.html", principal=principal, code=code, child=preview, values={}, errors={}, relationships=RELATIONSHIPS
    )


@post("/children/confirm", include_in_schema=False, guards=PARENTS_ONLY, status_code=200)
async def add_child_confirm(state: State, request: Request, principal: NamedDependency[Principal]) -> Response[Any]:
    """Link the child with the code, the relationship and (when needed) the school's policy."""
    form = await request.form()
    code = str(form.get("code") or "").strip()[:64]
    values = {"relationship": str(form.get("relationship") or ""), "accept_aup": form.get("accept_aup") == "yes"}

    async def again(errors: FieldErrors, message: str | None = None, status: int = 400) -> Template:
        preview = await _preview(state, request, principal, code)
        errors = FieldErrors({k: v.replace("the child", preview.first_name) for k, v in errors.items()})
        return render(
            request, "pages/link.html", principal=principal, status=status, code=code, child=preview, values=values,
            errors=errors, message=message, relationships=RELATIONSHIPS,
        )

    if not _relationship_ok(values["relationship"]):
        return await again(FieldErrors(relationship="Choose your relationship to the child"))
    try:
        answer = await parent_routes.add_child.fn(
            state=state,
            request=request,
            principal=principal,
            data=parent_routes.AddChildBody(code=code or "-", relationship=values["relationship"], accept_aup=values["accept_aup"]),
        )
    except RpcError as exc:
        err = api_error(exc)
        if exc.code == "aup_required":
            return await again(FieldErrors(accept_aup="Accept the school's acceptable-use policy to link the child"), status=422)
        if err.status_code in (409, 422):
            return await again(FieldErrors(), err.detail, err.status_code)
        raise
    child = answer.content
    first = child["first_name"]
    notice = f"{first} was already linked to your account." if answer.status_code == 200 else f"{first} is now linked to your account."
    return redirect(f"/?child={child['pupil_id']}", notice=notice)


async def _my_child(state: State, principal: Principal, pupil_id: str) -> dict[str, Any]:
    children = await parent_routes.my_children.fn(state=state, principal=principal)
    found = next((c for c in children if c["pupil_id"] == pupil_id), None)
    if found is None:
        raise ApiError(404, "not_found", "That child is not linked to your account.")
    return found


@get("/children/{pupil_id:str}/unlink", include_in_schema=False, guards=PARENTS_ONLY)
async def unlink_page(state: State, request: Request, principal: NamedDependency[Principal], pupil_id: str) -> Template:
    """Asks before a parent stops seeing a child."""
    child = await _my_child(state, principal, pupil_id)
    return render(request, "pages/unlink.html", principal=principal, child=child)


@post("/children/{pupil_id:str}/unlink", include_in_schema=False, guards=PARENTS_ONLY, status_code=200)
async def unlink_submit(state: State, request: Request, principal: NamedDependency[Principal], pupil_id: str) -> Response[Any]:
    """Unlink the child; the school can invite the parent again."""
    child = await _my_child(state, principal, pupil_id)
    await parent_routes.unlink_child.fn(state=state, principal=principal, pupil_id=pupil_id)
    return redirect("/", notice=f"{child['first_name']} is no longer linked to your account.")


ROUTES = [link_typed, link_page, add_child_page, add_child_preview, add_child_confirm, unlink_page, unlink_submit]
