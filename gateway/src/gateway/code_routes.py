"""Routes needing no login under `/api/v1`: what a link code is for, and the default
acceptable-use policy. Linking answers both (`contracts.linking`)."""

from __future__ import annotations

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from msgspec import Struct

from contracts import linking as contract
from contracts.identity import Principal
from gateway.auth import client_ip
from gateway.openapi import error_responses
from gateway.rpc import ask

TAGS = ["link codes"]
# PreviewCodeRequest's limit; a longer string is no code at all.
MAX_CODE_LENGTH = 256


class Policy(Struct):
    """An acceptable-use policy; `version` changes whenever the text does."""

    version: str
    text: str


class CodePreviewAnswer(Struct):
    """The child a code is for, so the parent can check it is theirs, and the school's policy."""

    first_name: str
    school_name: str
    class_name: str
    aup: Policy


@get(
    "/link-codes/{code:str}",
    tags=TAGS,
    summary="What a link code is for",
    description="No login needed. Any case, spaces and dashes are accepted. A bad, expired or revoked code: "
    "404 `invalid_code`, and it counts as a failed try (too many: 429).",
    responses=error_responses(404, 429, 503),
)
async def preview_code(
    state: State, request: Request, code: FromPath[str], maybe_principal: NamedDependency[Principal | None]
) -> CodePreviewAnswer:
    """The child's first name, school and class, and the policy of that school."""
    if len(code) > MAX_CODE_LENGTH:
        # Still asked, cut short, so that it counts as a failed try like any other bad code.
        code = code[:MAX_CODE_LENGTH]
    parent_id = maybe_principal.account_id if maybe_principal and maybe_principal.role == "parent" else None
    reply = await ask(
        state,
        contract.PREVIEW_CODE,
        contract.PreviewCodeRequest(code=code, client_ip=client_ip(request), parent_id=parent_id),
    )
    return CodePreviewAnswer(
        first_name=reply.first_name,
        school_name=reply.school_name,
        class_name=reply.class_name,
        aup=Policy(version=reply.aup.version, text=reply.aup.text),
    )


@get("/aup", tags=TAGS, summary="The default acceptable-use policy", responses=error_responses(503))
async def default_aup(state: State) -> Policy:
    """The policy a parent accepts when registering without a school's code."""
    reply = await ask(state, contract.AUP, contract.AupRequest())
    return Policy(version=reply.version, text=reply.text)


ROUTES = [preview_code, default_aup]
