"""`portal retention run`: every service applies its retention settings now.

Each service erases what the `PORTAL_RETENTION_*` settings keep no longer when asked on
`rpc.<service>.retention.v1` (as it also does daily), so this works on any deployment: it asks
each one and prints what each erased. It asks no question.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from contracts.rpc import RetentionReply

retention_app = typer.Typer(help="Erase what the PORTAL_RETENTION_* settings keep no longer.", no_args_is_help=True)


@retention_app.command("run")
def run() -> None:
    """Every service erases now what its retention settings keep no longer, and says what."""
    from contracts import rpc as contract
    from contracts.kit import rpc
    from portal.cli import _nats_url, _run_with_nats, fail

    url = _nats_url()

    async def ask(nc: NatsClient) -> dict[str, RetentionReply | str]:
        out: dict[str, RetentionReply | str] = {}
        for service in contract.SERVICES:
            try:
                out[service] = await rpc.call(nc, contract.retention(service), contract.RetentionRequest(), timeout=120)
            except (rpc.RpcUnavailable, rpc.RpcTimeout):
                out[service] = f"{service} did not answer; is it running?"
            except rpc.RpcError as exc:
                out[service] = f"{service}: {exc.detail}"
        return out

    replies = _run_with_nats(url, ask)
    problems = []
    for service, reply in replies.items():
        if isinstance(reply, str):
            problems.append(reply)
            continue
        erased = ", ".join(f"{kind} {count}" for kind, count in sorted(reply.erased.items()))
        typer.echo(f"{service}: erased {erased}")
    if problems:
        fail("; ".join(problems), 1)
