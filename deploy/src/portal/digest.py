"""`portal digest run [--at ISO_TIME]`: send the digests due at a moment.

notify composes and records every digest due at that moment (default now) from the data as it
is now, and sends them as it sends every email; a parent's digest of a day is recorded once,
however often this runs, on however many replicas. notify also runs it itself every
`PORTAL_NOTIFY_DIGEST_EVERY_SECONDS`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from contracts.notify import DigestRunReply

digest_app = typer.Typer(help="The parents' weekly and daily digest emails.", no_args_is_help=True)

# A run composes every due parent's digest before it answers: minutes for a large deployment.
RUN_TIMEOUT = 1800.0


def parse_at(value: str) -> datetime:
    """An ISO 8601 time with its offset (or Z); a time without one names no moment."""
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2026-12-04T16:00:00+00:00") from exc
    if at.tzinfo is None or at.utcoffset() is None:
        raise typer.BadParameter(f"{value!r} has no UTC offset: add one, e.g. Z or +00:00")
    return at


@digest_app.command("run")
def run(
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="The moment to send for (ISO 8601 with an offset, e.g. 2026-12-04T16:00Z); default now."
        ),
    ] = None,
) -> None:
    """Send the digests due at a moment (default now): never twice for a parent and day."""
    from contracts import notify as contract
    from contracts.kit import rpc
    from portal.cli import _nats_url, _run_with_nats, fail

    moment = parse_at(at) if at is not None else None
    url = _nats_url()

    async def ask(nc: NatsClient) -> DigestRunReply | str:
        try:
            return await rpc.call(nc, contract.DIGEST_RUN, contract.DigestRunRequest(at=moment), timeout=RUN_TIMEOUT)
        except (rpc.RpcUnavailable, rpc.RpcTimeout):
            return "notify did not answer; is it running?"
        except rpc.RpcError as exc:
            return f"notify: {exc.detail}"

    reply = _run_with_nats(url, ask)
    if isinstance(reply, str):
        fail(reply, 1)
    typer.echo(
        f"digests at {reply.at.isoformat()}: {reply.recorded} sent, {reply.already} already sent for that day, "
        f"{reply.not_due} not due, {reply.no_children} without a linked child ({reply.recipients} parents wanting one)"
    )
