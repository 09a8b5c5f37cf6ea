"""`/platform`: a small stand-in for the learning platform, so the demo's buttons lead somewhere.

The overview's links go through the portal's handoff (`/go/<pupil_id>/<area>`), which sends the
parent here with a signed token when `PORTAL_PLATFORM_URL` is not set. The stand-in does what a
platform must (docs/platform-handoff.md): it verifies the token against the portal's JWKS,
refuses it once used, and says who arrived, or why nobody did. A real deployment sets
`PORTAL_PLATFORM_URL` to the platform and this stand-in is never linked to.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Annotated, Any

import jwt
from litestar import Request, Router, get
from litestar.params import Parameter
from litestar.response import Template

from gateway import handoff
from gateway.errors import ApiError
from gateway.pages.go_pages import get_handoff_keys
from gateway.settings import GatewaySettings

SECTIONS = {
    "homework": ("Homework", "the homework set for this pupil, with what is done and what is due"),
    "files": ("Files", "the pupil's own files and the work they have saved"),
    "messages": ("Messages", "the messages the pupil has received from teachers"),
}

# Tokens already used, until they expire: a copied URL does not let anyone in a second time.
_USED: OrderedDict[str, float] = OrderedDict()
_USED_MAX = 100_000


def _first_use(jti: str, exp: float) -> bool:
    now = time.time()
    while _USED and next(iter(_USED.values())) < now:
        _USED.popitem(last=False)
    if jti in _USED:
        return False
    _USED[jti] = exp
    while len(_USED) > _USED_MAX:
        _USED.popitem(last=False)
    return True


def _arrival(request: Request, token: str) -> tuple[dict[str, Any] | None, str | None]:
    """The token's claims when it lets the parent in, else why not."""
    if not token:
        return None, "No token: the platform would ask this visitor to sign in."
    settings: GatewaySettings = request.app.state.settings
    try:
        claims = handoff.verify(
            get_handoff_keys(request.app.state).jwks,
            token,
            issuer=handoff.origin(settings.public_url),
            audience=handoff.origin(settings.platform_url),
        )
    except jwt.PyJWTError as exc:
        return None, f"Token refused: {exc}."
    if not _first_use(str(claims["jti"]), float(claims["exp"])):
        return None, "Token refused: it was used already."
    return claims, None


def _page(request: Request, section: str, pupil: str, token: str) -> Template:
    title, what = SECTIONS[section]
    claims, refused = _arrival(request, token) if token or pupil else (None, None)
    if claims is not None and claims.get("pupil_id") != pupil:
        claims, refused = None, "Token refused: it names another pupil than the link."
    return Template(
        template_name="platform_standin.html",
        context={
            "title": title,
            "what": what,
            "pupil": pupil,
            "sections": SECTIONS,
            "section": section,
            "claims": claims,
            "refused": refused,
            "lifetime": int(claims["exp"] - claims["iat"]) if claims else None,
        },
    )


@get("/{section:str}", include_in_schema=False, operation_id="platform_section", sync_to_thread=False)
def platform_section(
    request: Request,
    section: str,
    pupil: Annotated[str, Parameter(query="pupil", default="", max_length=128)],
    token: Annotated[str, Parameter(query="token", default="", max_length=4096)],
) -> Template:
    """One section of the stand-in platform, entered with the portal's token."""
    if section not in SECTIONS:
        raise ApiError(404, "not_found", "The demo platform has homework, files and messages only.")
    return _page(request, section, pupil, token)


@get("/", include_in_schema=False, operation_id="platform_home", sync_to_thread=False)
def platform_home(request: Request) -> Template:
    """The stand-in's front page."""
    return _page(request, "homework", "", "")


platform_router = Router(path="/platform", route_handlers=[platform_home, platform_section])
