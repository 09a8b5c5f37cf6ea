"""Reference routes for `make bench`, mounted only when `PORTAL_BENCH_ROUTES=1`.

The overview route is judged against what the same gateway process, with the same settings and
middleware, serves without any work of its own: `/bench/hello` (a JSON object) and `/bench/nats`
(one request over the gateway's own nats-py client to `bench.echo.v1`, which the benchmark
answers with a raw nats-py responder). Off by default: a deployment never has them.
"""

from __future__ import annotations

import os

from litestar import Response, get
from litestar.datastructures import State

from gateway.clients.nats import get_nats

ECHO_SUBJECT = "bench.echo.v1"


def enabled() -> bool:
    """Whether `PORTAL_BENCH_ROUTES` asks for these routes."""
    return os.environ.get("PORTAL_BENCH_ROUTES", "").strip().lower() in ("1", "true", "yes")


@get("/bench/hello", include_in_schema=False, operation_id="bench_hello")
async def hello() -> dict[str, str]:
    """The hello-world JSON route."""
    return {"hello": "world"}


@get("/bench/nats", include_in_schema=False, operation_id="bench_nats")
async def one_request(state: State) -> Response[bytes]:
    """One raw nats-py request, its reply passed through."""
    msg = await get_nats(state).request(ECHO_SUBJECT, b"{}", timeout=state.settings.rpc_timeout)
    return Response(msg.data, media_type="application/json")


ROUTES = [hello, one_request]
