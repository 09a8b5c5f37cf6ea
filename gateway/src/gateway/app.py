"""Builds the gateway's Litestar application from its settings; nothing is built at import time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from litestar.types import ControllerRouterHandler

from gateway import (
    __version__,
    auth,
    auth_routes,
    bar_routes,
    code_routes,
    health,
    pages,
    parent_routes,
    staff_link_routes,
    staff_routes,
)
from gateway.caches import links as links_cache
from gateway.caches import overview as overview_cache
from gateway.caches.links import LinksCache
from gateway.clients.nats import NatsTransport, nats_lifespan
from gateway.dev import bench as bench_routes
from gateway.dev import mail as devmail
from gateway.edge import security_headers, wrap_access_log
from gateway.errors import exception_handlers
from gateway.openapi import openapi_config
from gateway.dev.platform import platform_router
from gateway.rpc import rpc_exception_handlers
from gateway.settings import GatewaySettings

API_PREFIX = "/api/v1"
PACKAGE_DIR = Path(__file__).parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"


def api_router(route_handlers: Sequence[ControllerRouterHandler] = ()) -> Router:
    """The public API under `/api/v1`; its routes' paths are relative to it."""
    return Router(path=API_PREFIX, route_handlers=list(route_handlers), tags=["api"])


def _template_engine(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["linkify"] = devmail.linkify
    pages.register_filters(engine)


def create_app(
    settings: GatewaySettings | None = None,
    *,
    api_route_handlers: Sequence[ControllerRouterHandler] = (),
    extra_route_handlers: Sequence[ControllerRouterHandler] = (),
) -> Litestar:
    """The gateway application: health and readiness, the `/api/v1` router (sign-in and `/me`
    included), `/dev/mail` while the local sink is in use, API.md's error format everywhere, one
    NATS client in `app.state.nats`, the session cache in `app.state.auth`.

    `api_route_handlers` go under `/api/v1`; `extra_route_handlers` are mounted at the root as
    given (tests register throw-away routes with it). Any handler may declare `principal` or
    `maybe_principal` (see `gateway.auth`).
    """
    settings = settings or GatewaySettings()
    sessions = auth.SessionAuth(settings)
    links = LinksCache(settings.links_cache_seconds)
    overviews = overview_cache.OverviewCache(settings.overview_cache_seconds, settings.overview_cache_entries)
    handlers: list[ControllerRouterHandler] = [
        health.health,
        health.ready,
        api_router(
            [
                *auth_routes.ROUTES,
                *parent_routes.ROUTES,
                *staff_routes.ROUTES,
                *staff_link_routes.ROUTES,
                *bar_routes.ROUTES,
                *code_routes.ROUTES,
                *api_route_handlers,
            ]
        ),
        create_static_files_router(path="/static", directories=[STATIC_DIR]),
        pages.router(settings),
        *extra_route_handlers,
    ]
    if settings.dev_mail_dir is not None:
        handlers.extend(devmail.ROUTES)
    if bench_routes.enabled():
        handlers.extend(bench_routes.ROUTES)
    if settings.platform_url == f"{settings.public_url}/platform":
        # No platform named: the overview's buttons lead to the demo stand-in.
        handlers.append(platform_router)
    app = Litestar(
        route_handlers=handlers,
        state=State(
            {
                "settings": settings,
                auth.STATE_KEY: sessions,
                links_cache.STATE_KEY: links,
                overview_cache.STATE_KEY: overviews,
            }
        ),
        lifespan=[
            nats_lifespan(
                settings,
                NatsTransport(settings),
                on_connect=[sessions.subscribe, links.subscribe, overviews.subscribe],
                on_reconnect=[sessions.on_reconnect, links.on_reconnect, overviews.on_reconnect],
            )
        ],
        dependencies=auth.dependencies(),
        exception_handlers={**exception_handlers(), **rpc_exception_handlers()},
        before_send=[security_headers, auth.cookie_refresher(settings)],
        openapi_config=openapi_config(__version__, session_cookie=auth.cookie_name(settings)),
        template_config=TemplateConfig(
            directory=TEMPLATES_DIR,
            engine=JinjaTemplateEngine,
            engine_callback=_template_engine,
        ),
        # Our own structlog set-up (contracts.kit.logs) is the only one; Litestar's default
        # would replace the root logger's handlers at start-up.
        logging_config=None,
        debug=False,
    )
    return wrap_access_log(app)
