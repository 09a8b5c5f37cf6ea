"""The HTTP API under `/api/v1`, one module per area; `/health` and `/ready` at the root.

Routes ask the services through the clients (`clients`, `staff` dependencies), compose
several through `gateway.flows`, and answer the models of `gateway.models`.
"""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Router
from litestar.types import ControllerRouterHandler

from gateway.api import access, auth, bars, children, codes, export, health, parents, preferences, staff, trust

PREFIX = "/api/v1"
ROOT_ROUTES = health.ROUTES


def router(extra: Sequence[ControllerRouterHandler] = ()) -> Router:
    """The public API under `/api/v1`; its routes' paths (and `extra`'s) are relative to it."""
    return Router(
        path=PREFIX,
        route_handlers=[
            *auth.ROUTES,
            *parents.ROUTES,
            *children.ROUTES,
            *staff.ROUTES,
            *access.ROUTES,
            *bars.ROUTES,
            *codes.ROUTES,
            *export.ROUTES,
            *preferences.ROUTES,
            *trust.ROUTES,
            *extra,
        ],
        tags=["api"],
    )
