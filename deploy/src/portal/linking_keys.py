"""`portal linking new-key` and `portal linking rekey`: make a code key, and rotate to a new one.

Rotating `PORTAL_LINKING_CODE_KEY` loses nothing: every linking replica is given the new key and
the old one in `PORTAL_LINKING_CODE_OLD_KEYS` (codes and bars made under it keep working), then
`portal linking rekey` rewrites linking's rows under the new key (through its database, as
`portal migrate` does, with the same settings as linking; safe while linking runs), after which
the old key is removed from every replica.
"""

from __future__ import annotations

import typer

linking_keys_app = typer.Typer(
    help="The link-code key (PORTAL_LINKING_CODE_KEY): make one, rotate to a new one.", no_args_is_help=True
)


@linking_keys_app.command("new-key")
def new_key() -> None:
    """Print a fresh code key (32 random bytes, URL-safe base64) for PORTAL_LINKING_CODE_KEY."""
    from linking.codes import new_key as make

    typer.echo(make())


@linking_keys_app.command("rekey")
def rekey() -> None:
    """Rewrite every link code and bar under PORTAL_LINKING_CODE_KEY, reading them under it or
    PORTAL_LINKING_CODE_OLD_KEYS; exit 0 once none needs an old key any more."""
    import asyncio

    from contracts.base import utcnow
    from contracts.kit.db import Database
    from linking import app, codes, keys
    from linking.addresses import AddressVault
    from portal.cli import fail

    try:
        settings = app.Settings()
        configured = settings.code_keys()
        vault = codes.CodeVault(configured.current, configured.old)
        addresses = AddressVault(configured.current, configured.old)
    except (codes.CodeKeyError, codes.InvalidKey) as exc:
        fail(str(exc), 2)

    async def run() -> keys.RekeyReport:
        db = Database(settings.resolved_database_url())
        try:
            return await keys.rekey(db, vault, addresses, now=utcnow())
        finally:
            await db.dispose()

    try:
        report = asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - one line for the operator, not a traceback
        fail(
            f"re-keying linking's database failed: {type(exc).__name__}: {exc} (is its schema current? `portal migrate`)",
            1,
        )
    typer.echo(f"re-keyed {report.codes} link code(s) and {report.bars} bar(s) under {codes.KEY_SETTING}")
    if report.contacts:
        typer.echo(f"re-keyed {report.contacts} parent contact(s) from the roster")
    if report.unreadable_contacts:
        typer.echo(
            f"{report.unreadable_contacts} parent contact(s) from the roster were written under a key that is not "
            f"configured: add it to {codes.OLD_KEYS_SETTING} and run this again, or import the roster again",
            err=True,
        )
    if report.retired_invitation_codes:
        typer.echo(
            f"{report.retired_invitation_codes} used, revoked or expired invitation code(s) can no longer be "
            "found by what is typed (they answered `invalid_code` anyway)"
        )
    if report.unreadable_codes or report.unreadable_bars:
        fail(
            f"{report.unreadable_codes} link code(s) and {report.unreadable_bars} bar(s) were written under a key "
            f"that is neither {codes.KEY_SETTING} nor in {codes.OLD_KEYS_SETTING} ({', '.join(report.unreadable_ids[:5])}"
            f"{', …' if len(report.unreadable_ids) > 5 else ''}): add that key to {codes.OLD_KEYS_SETTING} and run "
            "this again",
            1,
        )
    if report.waiting_invitation_codes:
        until = report.waiting_until.isoformat(timespec="minutes") if report.waiting_until else "?"
        fail(
            f"{report.waiting_invitation_codes} invitation code(s) still open were emailed under an old key and "
            f"are kept only as its hash: keep {codes.OLD_KEYS_SETTING} until they are used or expire (the last at "
            f"{until}), or send those invitations again, then run this again",
            1,
        )
    if configured.old:
        typer.echo(
            f"every link code and bar is under {codes.KEY_SETTING}: remove {codes.OLD_KEYS_SETTING} from every linking replica"
        )
    else:
        typer.echo(f"every link code and bar is under {codes.KEY_SETTING}")
