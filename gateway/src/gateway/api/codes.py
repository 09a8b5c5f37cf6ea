"""Routes needing no login under `/api/v1`: what a link code is for, and the default
acceptable-use policy. Linking answers both (`LinkingClient`)."""

from __future__ import annotations

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from contracts.identity import Principal
from gateway.auth import client_ip
from gateway.clients import Clients
from gateway.models import CodePreviewAnswer, Policy
from gateway.openapi import error_responses

TAGS = ["link codes"]
# PreviewCodeRequest's limit; a longer string is no code at all.
MAX_CODE_LENGTH = 256


@get(
    "/link-codes/{code:str}",
    tags=TAGS,
    summary="What a link code is for",
    operation_id="preview_link_code",
    description="No login needed. Any case, spaces and dashes are accepted. A bad, expired or revoked code: "
    "404 `invalid_code`, and it counts as a failed try (too many: 429).",
    responses=error_responses(404, 429, 503),
)
async def preview_code(
    request: Request,
    clients: NamedDependency[Clients],
    code: FromPath[str],
    maybe_principal: NamedDependency[Principal | None],
) -> CodePreviewAnswer:
    """The child's first name, school and class, and the policy of that school."""
    # A longer one is still asked, cut short, so that it counts as a failed try like any other bad code.
    parent_id = maybe_principal.account_id if maybe_principal and maybe_principal.role == "parent" else None
    preview = await clients.linking.preview_code(code[:MAX_CODE_LENGTH], client_ip(request), parent_id)
    return CodePreviewAnswer.of(preview)


@get(
    "/aup",
    tags=TAGS,
    summary="The default acceptable-use policy",
    operation_id="get_default_aup",
    responses=error_responses(503),
)
async def default_aup(clients: NamedDependency[Clients]) -> Policy:
    """The policy a parent accepts when registering without a school's code."""
    return Policy.of(await clients.linking.aup())


ROUTES = [preview_code, default_aup]
