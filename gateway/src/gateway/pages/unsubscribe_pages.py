"""A digest's one-click unsubscribe (RFC 8058), at `/unsubscribe/{token}`, without signing in.

A mail program POSTs `List-Unsubscribe=One-Click` to the URL of the `List-Unsubscribe` header;
a person who follows the link gets a page with one button that POSTs the same. A GET changes
nothing: mail scanners open links. The POST needs no session and no CSRF token, and is not
refused from another site (a webmail may send it from its own page): all it can do is what the
token in its URL was made for, turn one parent's digest off, which is the point.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import Template

from contracts.kit.rpc import RpcError
from gateway.clients import Clients
from gateway.pages.common import as_api_error, render

PATH = "/unsubscribe"
ONE_CLICK = ("List-Unsubscribe", "One-Click")

Token = Annotated[str, Parameter(max_length=200)]


@get(f"{PATH}/{{token:str}}", include_in_schema=False, operation_id="page_unsubscribe")
async def unsubscribe_page(request: Request, token: Token) -> Template:
    """The digest's unsubscribe link: one button turns the digest off."""
    return render(request, "pages/unsubscribe.html", token=token)


@post(f"{PATH}/{{token:str}}", include_in_schema=False, status_code=200, operation_id="page_unsubscribe_submit")
async def unsubscribe_submit(request: Request, token: Token, clients: NamedDependency[Clients]) -> Template:
    """RFC 8058's one-click POST (or the page's button): the digest becomes off. 400 for a body
    that is not `List-Unsubscribe=One-Click` or a token that is unknown or altered."""
    form = await request.form()
    if form.get(ONE_CLICK[0]) != ONE_CLICK[1]:
        return render(request, "pages/unsubscribe.html", status=400, token=token, failed=True)
    try:
        await clients.identity.unsubscribe(token)
    except RpcError as exc:
        if as_api_error(exc).status_code in (400, 422):
            return render(request, "pages/unsubscribe.html", status=400, token="", failed=True)
        raise
    return render(request, "pages/unsubscribe.html", done=True)


ROUTES = [unsubscribe_page, unsubscribe_submit]
