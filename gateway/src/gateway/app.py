"""Builds the gateway's Litestar application from its settings and clients; nothing is built
at import time."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from litestar.types import ControllerRouterHandler

from contracts.kit.metrics import GatewayMetrics
from gateway import __version__, api, auth, handoff, install, pages
from gateway.caches import detail as detail_cache
from gateway.caches import links as links_cache
from gateway.caches import overview as overview_cache
from gateway.caches import sessions
from gateway.clients import STATE_KEY as CLIENTS_KEY
from gateway.clients import Clients
from gateway.clients.nats import NatsTransport, nats_lifespan
from gateway.dev import bench, mail, platform
from gateway.edge import BrowserChecks, wrap_edge
from gateway.errors import exception_handlers
from gateway.openapi import openapi_config
from gateway.ops import STATE_KEY as METRICS_KEY
from gateway.ops import StatusResponder, ops_lifespan
from gateway.pages import go_pages
from gateway.settings import GatewaySettings
from gateway.tracing import wrap_tracing

API_PREFIX = api.PREFIX
PACKAGE_DIR = Path(__file__).parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"


def _template_engine(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["linkify"] = mail.linkify
    pages.register_filters(engine)


def create_app(
    settings: GatewaySettings | None = None,
    clients: Clients | None = None,
    *,
    api_route_handlers: Sequence[ControllerRouterHandler] = (),
    extra_route_handlers: Sequence[ControllerRouterHandler] = (),
) -> Litestar:
    """The gateway application: health and readiness, the `/api/v1` router (sign-in and `/me`
    included), the web pages, `/dev/mail` while the local sink is in use, one error format
    everywhere (docs/http-api.md), the caches in `app.state`.

    `clients` are how it asks the services: by default over one NATS connection the
    application opens (`app.state.nats`) and that feeds the caches' events; clients over any
    other transport (tests' `FakeTransport`) need no NATS at all, and the caches then hear no
    events (sessions and overviews are not cached).

    `api_route_handlers` go under `/api/v1`; `extra_route_handlers` are mounted at the root as
    given (tests register throw-away routes with it). Any handler may declare `principal`,
    `maybe_principal`, `clients` or `staff` (see `gateway.auth`).
    """
    settings = settings or GatewaySettings()
    clients = clients or Clients.over(NatsTransport(settings))
    auth_cache = sessions.SessionAuth(settings, clients.identity)
    links = links_cache.LinksCache(
        clients.linking.active_pupils, settings.links_cache_seconds, removal_wait=settings.revocation_wait_seconds
    )
    overviews = overview_cache.OverviewReader(
        overview_cache.OverviewCache(settings.overview_cache_seconds, settings.overview_cache_entries),
        functools.partial(clients.overview.get_raw, timeout=settings.overview_timeout),
    )
    # Read (or made) now: a key file that cannot be used stops the start-up, naming it.
    handoff_keys = handoff.HandoffKeys.load(settings)
    details = detail_cache.DetailCache(settings.overview_cache_seconds, settings.overview_cache_entries)
    handlers: list[ControllerRouterHandler] = [
        *api.ROOT_ROUTES,
        *go_pages.ROOT_ROUTES,
        *install.ROOT_ROUTES,
        api.router(api_route_handlers),
        create_static_files_router(path="/static", directories=[STATIC_DIR]),
        pages.router(settings),
        *extra_route_handlers,
    ]
    if settings.dev_mail_dir is not None:
        handlers.extend(mail.ROUTES)
    if bench.enabled():
        handlers.extend(bench.ROUTES)
    if settings.platform_url == f"{settings.public_url}/platform":
        # No platform named: the overview's buttons lead to the demo stand-in.
        handlers.append(platform.platform_router)
    metrics = GatewayMetrics(__version__)
    lifespan = []
    if settings.ops_port is not None:
        # First: /livez answers while NATS is still being reached.
        lifespan.append(ops_lifespan(settings, metrics))
    if isinstance(clients.transport, NatsTransport):
        status = StatusResponder()
        lifespan.append(
            nats_lifespan(
                settings,
                clients.transport,
                on_connect=[
                    auth_cache.subscribe,
                    links.subscribe,
                    overviews.cache.subscribe,
                    details.subscribe,
                    status.subscribe,
                ],
                on_reconnect=[
                    auth_cache.on_reconnect,
                    links.on_reconnect,
                    overviews.cache.on_reconnect,
                    details.on_reconnect,
                ],
            )
        )
    app = Litestar(
        route_handlers=handlers,
        state=State(
            {
                "settings": settings,
                CLIENTS_KEY: clients,
                sessions.STATE_KEY: auth_cache,
                links_cache.STATE_KEY: links,
                overview_cache.STATE_KEY: overviews,
                detail_cache.STATE_KEY: details,
                go_pages.STATE_KEY: handoff_keys,
            }
        ),
        lifespan=lifespan,
        # Before any guard, body or service: a page of another site gets nothing done.
        middleware=[BrowserChecks.define(settings.public_url, API_PREFIX)],
        dependencies=auth.dependencies(),
        exception_handlers=exception_handlers(),
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
    app.state[METRICS_KEY] = metrics
    return wrap_tracing(
        wrap_edge(app, https=settings.secure_cookies, metrics=metrics, on_start=auth.cookie_refresher(settings))
    )
