"""The caller's own data (`GET /me/export`): everything the portal holds about them, as a JSON
file to keep (data protection's right of access). The web page `/account` offers the same file.
"""

from __future__ import annotations

import msgspec
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from contracts.base import utcnow
from contracts.identity import Principal
from gateway import flows
from gateway.auth import SECURITY
from gateway.clients import Clients
from gateway.models import AccountExport
from gateway.openapi import error_responses

TAGS = ["account"]


def export_response(export: AccountExport) -> Response[bytes]:
    """The export as a file download that no browser or proxy keeps a copy of."""
    filename = f"parent-portal-data-{utcnow():%Y-%m-%d}.json"
    return Response(
        content=msgspec.json.encode(export),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


@get(
    "/me/export",
    tags=TAGS,
    summary="Everything the portal holds about me",
    operation_id="export_my_data",
    security=SECURITY,
    responses={
        200: ResponseSpec(
            AccountExport,
            description="The caller's data as a JSON file (`Content-Disposition: attachment`). "
            "It never contains a code, a token or a password hash.",
            generate_examples=False,
        ),
        **error_responses(401, 503),
    },
)
async def export_my_data(
    request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal]
) -> Response[bytes]:
    """A parent's account, children (ended links too), the audit entries naming them, their emails
    and sessions; a member of staff's account and sessions."""
    return export_response(await flows.export_data(clients, principal))


ROUTES = [export_my_data]
