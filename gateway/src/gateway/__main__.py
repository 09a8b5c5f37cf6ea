"""`python -m gateway serve`: one gateway replica under uvicorn."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from contracts.kit.heap import freeze_startup_heap
from contracts.kit.logs import configure_logging, get_logger
from contracts.kit.ops import OpsPortUnavailable, check_port
from contracts.kit.settings import NatsCredentialsMissing, NatsNotFound, NatsUrlInvalid
from gateway.settings import GatewaySettings


def _stopped(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM once uvicorn has shut down: nothing left to do."""


def serve(settings: GatewaySettings | None = None) -> None:
    """Run one gateway replica until SIGTERM or Ctrl-C."""
    settings = settings or GatewaySettings()
    configure_logging(service="gateway", level=settings.log_level, fmt=settings.log_format)
    log = get_logger("gateway.main")
    try:
        settings.resolve_nats_url()
    except NatsNotFound as exc:
        log.error("nats_url_invalid" if isinstance(exc, NatsUrlInvalid) else "nats_not_found", detail=str(exc))
        sys.exit(2)
    try:
        settings.nats_connect_options("gateway")
    except NatsCredentialsMissing as exc:
        log.error("nats_credentials_missing", detail=str(exc))
        sys.exit(2)
    if settings.ops_port is not None:
        try:
            check_port(settings.ops_host, settings.ops_port)
        except OpsPortUnavailable as exc:
            log.error("ops_port_unavailable", detail=str(exc))
            sys.exit(2)
    # Imported only now: they are slow to import, and a missing NATS is reported at once.
    import uvicorn

    from contracts.kit import tracing
    from gateway.app import create_app

    # Before the application is built: it is wrapped in a span per request only when on.
    tracing.setup("gateway")
    app = create_app(settings)
    freeze_startup_heap()
    log.info("gateway_starting", host=settings.http_host, port=settings.http_port)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it
    # found: the default one would end the process "killed by SIGTERM" rather than with the 0 a
    # stop asked for ends with. Found this one, the process goes on to exit 0.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        workers=1,
        loop="uvloop",
        # The C parser: the pure-Python h11 one costs a third of the rate.
        http="httptools",
        lifespan="on",
        # Our access log (gateway.edge) leaves out query strings, which may carry tokens.
        access_log=False,
        # None: keep configure_logging's JSON handler; uvicorn's own config would add plain text.
        log_config=None,
        log_level=settings.log_level.lower(),
        server_header=False,
        # The socket peer is the client; X-Forwarded-For is believed only from PORTAL_TRUSTED_PROXIES
        # (gateway.auth.client_ip), not from whatever uvicorn trusts by default.
        proxy_headers=False,
        # SIGTERM: stop accepting, let requests in flight finish, and be gone well inside the
        # 10 seconds an orchestrator waits before it kills.
        timeout_graceful_shutdown=5,
    )
    tracing.shutdown()


def run(argv: list[str] | None = None) -> None:
    """Console entry point: `portal-gateway serve` / `python -m gateway serve`."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Parent Portal gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run one replica (settings from PORTAL_* variables)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve()


if __name__ == "__main__":
    run()
