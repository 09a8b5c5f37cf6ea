"""Settings of the gateway, read from `PORTAL_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from contracts.kit.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """What the gateway needs: where to listen, the public addresses it writes into pages and
    links, and (in development) the local mail sink's Maildir."""

    http_port: int = Field(default=8000, ge=1, le=65535, description="The HTTP port (PORTAL_HTTP_PORT).")
    http_host: str = Field(default="127.0.0.1", description="The address to listen on (PORTAL_HTTP_HOST).")
    public_url: str = Field(
        default="",
        description="The base of links in emails and QR codes (PORTAL_PUBLIC_URL); "
        "`http://127.0.0.1:<http_port>` when unset.",
    )
    platform_url: str = Field(
        default="",
        description="The learning platform overview links point into (PORTAL_PLATFORM_URL); "
        "the demo stand-in at `<public_url>/platform` when unset.",
    )
    dev_mail_dir: Path | None = Field(
        default=None,
        description="The local mail sink's Maildir (PORTAL_DEV_MAIL_DIR), set by `portal up` only while "
        "that sink is in use; `/dev/mail` lists it. Unset: `/dev/mail` does not exist.",
    )
    ready_timeout: float = Field(
        default=1.0, gt=0, le=30, description="Seconds `/ready` waits for each service's health answer."
    )

    @model_validator(mode="after")
    def _derive_urls(self) -> GatewaySettings:
        # Links are joined as f"{public_url}/verify?…": a trailing slash would double it.
        self.public_url = (self.public_url or f"http://127.0.0.1:{self.http_port}").rstrip("/")
        self.platform_url = (self.platform_url or f"{self.public_url}/platform").rstrip("/")
        return self
