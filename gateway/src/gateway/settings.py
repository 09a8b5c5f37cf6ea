"""Settings of the gateway, read from `PORTAL_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from contracts.kit.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """What the gateway needs beyond the common settings (which carry the port and the public
    and platform URLs): where to listen, and (in development) the local mail sink's Maildir."""

    http_host: str = Field(default="127.0.0.1", description="The address to listen on (PORTAL_HTTP_HOST).")
    dev_mail_dir: Path | None = Field(
        default=None,
        description="The local mail sink's Maildir (PORTAL_DEV_MAIL_DIR), set by `portal up` only while "
        "that sink is in use; `/dev/mail` lists it. Unset: `/dev/mail` does not exist.",
    )
    ready_timeout: float = Field(
        default=1.0, gt=0, le=30, description="Seconds `/ready` waits for each service's health answer."
    )

