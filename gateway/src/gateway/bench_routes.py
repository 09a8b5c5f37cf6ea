"""Reference routes for `make bench`, mounted only when `PORTAL_BENCH_ROUTES=1`.

The overview route is judged against what the same gateway process, with the same settings and
middleware, serves without any work of its own: `/bench/hello` (a JSON object) and `/bench/nats`
(one request over the gateway's own nats-py client to `bench.echo.v1`, which the benchmark
answers with a raw nats-py responder). `/bench/overview-lean` answers exactly what
`/api/v1/me/overview` does, with the caller resolved in the handler instead of by a Litestar
guard and dependency: it measures what that machinery costs. Off by default: a deployment never
has them.
"""

from __future__ import annotations

import os

from litestar import Request, Response, get
from litestar.datastructures import State

from gateway.bus import get_nats

ECHO_SUBJECT = "bench.echo.v1"


def enabled() -> bool:
    """Whether `PORTAL_BENCH_ROUTES` asks for these routes."""
    return os.environ.get("PORTAL_BENCH_ROUTES", "").strip().lower() in ("1", "true", "yes")


@get("/bench/hello", include_in_schema=False)
async def hello() -> dict[str, str]:
    """The hello-world JSON route."""
    return {"hello": "world"}


@get("/bench/nats", include_in_schema=False)
async def one_request(state: State) -> Response[bytes]:
    """One raw nats-py request, its reply passed through."""
    msg = await get_nats(state).request(ECHO_SUBJECT, b"{}", timeout=state.settings.rpc_timeout)
    return Response(msg.data, media_type="application/json")


@get("/bench/overview-lean", include_in_schema=False)
async def overview_lean(request: Request) -> Response[bytes]:
    """`GET /api/v1/me/overview` without guards or injected dependencies."""
    # Imported here: whatever becomes of these, a gateway without the bench routes still starts.
    from gateway.auth import authenticate
    from gateway.errors import ApiError
    from gateway.links_cache import get_links_cache
    from gateway.parent_routes import JSON, _overview

    principal = await authenticate(request)
    if principal is None or principal.role != "parent":
        raise ApiError(404, "not_found", "Nothing was found at this address.")
    state = request.app.state
    pupil_ids = await get_links_cache(state).active(state, principal.account_id)
    return Response(await _overview(state, principal.account_id, pupil_ids), media_type=JSON)


ROUTES = [hello, one_request, overview_lean]
