"""`portal parent delete --email E` (or `--id ID`): an operator deletes a parent's account.

The same as the parent's own "Delete my account" (`DELETE /api/v1/me`) without the password:
identity deletes the account and ends its sessions at once, and every service erases what it
keeps about the parent when it applies `identity.account.deleted.v1`. It asks no question.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from contracts.identity import AccountDeletedReply

parent_app = typer.Typer(help="Parents' accounts: delete one on request.", no_args_is_help=True)


@parent_app.command("delete")
def parent_delete(
    email: str = typer.Option("", "--email", help="The parent's email address (their login)."),
    account_id: str = typer.Option(
        "", "--id", help="Or the account's id, as audit trails name it (to delete again after restoring a backup)."
    ),
) -> None:
    """Delete a parent's account: sessions end, links end, name and address are erased everywhere."""
    from portal.cli import _nats_url, _run_with_nats, fail

    email, account_id = email.strip(), account_id.strip()
    if bool(email) == bool(account_id):
        fail("give either --email or --id", 2)
    url = _nats_url()
    from contracts import identity as c
    from contracts.kit import rpc

    async def delete(nc: NatsClient) -> AccountDeletedReply | str:
        try:
            return await rpc.call(
                nc, c.DELETE_PARENT, c.DeleteParentRequest(email=email, account_id=account_id), timeout=15
            )
        except (rpc.RpcUnavailable, rpc.RpcTimeout):
            return "identity did not answer; is it running?"
        except rpc.RpcError as exc:
            return exc.detail

    reply = _run_with_nats(url, delete)
    if isinstance(reply, str):
        fail(reply, 1)
    typer.echo(f"deleted parent account {reply.account_id}; every service erases what it keeps about it")
