"""`/go/<pupil_id>/<area>`: the way from the child's card into the learning platform.

Checked at the moment of the click: signed in (else to sign in and back here), a parent of that
child now (else 404). The answer is 303 to the school's link template with the pupil and a
short-lived signed token filled in (`gateway.handoff`); `/.well-known/jwks.json` publishes the
keys that verify it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Redirect

from contracts.identity import Principal
from gateway import children, handoff
from gateway.auth import parents_only
from gateway.errors import not_found
from gateway.settings import GatewaySettings

STATE_KEY = "handoff_keys"


def get_handoff_keys(state: State) -> handoff.HandoffKeys:
    """The replica's handoff keys (loaded when the application is built)."""
    return state[STATE_KEY]


@get("/go/{pupil_id:str}/{area:str}", include_in_schema=False, guards=[parents_only], operation_id="page_go")
async def go(request: Request, principal: NamedDependency[Principal], pupil_id: str, area: str) -> Response[Any]:
    """303 into the platform with a signed token naming the parent and the pupil."""
    if area not in handoff.AREAS:
        raise not_found("The platform has homework, files and messages.")
    state = request.app.state
    await children.check_child(state, principal.account_id, pupil_id)
    target = await children.target(state, pupil_id)
    settings: GatewaySettings = state.settings
    url = getattr(target, area)
    token = handoff.sign(
        get_handoff_keys(state),
        issuer=handoff.origin(settings.public_url),
        audience=handoff.origin(url),
        parent_id=principal.account_id,
        pupil_id=pupil_id,
        school_id=target.school_id,
        lifetime=settings.handoff_token_seconds,
    )
    response = Redirect(path=url.replace("{token}", quote(token, safe="")), status_code=303)
    # The token is in the Location: nothing may keep it, and the next page is not told where
    # the parent came from.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@get(
    "/.well-known/jwks.json",
    include_in_schema=False,
    operation_id="handoff_jwks",
    sync_to_thread=False,
)
def jwks(request: Request) -> Response[dict[str, Any]]:
    """The public keys that verify the handoff's tokens (RFC 7517), each with its `kid`."""
    return Response(
        get_handoff_keys(request.app.state).jwks,
        media_type="application/jwk-set+json",
        # A platform may keep it a few minutes; a token with an unknown `kid` is its cue to ask again.
        headers={"Cache-Control": "public, max-age=300"},
    )


ROUTES = [go]
ROOT_ROUTES = [jwks]
