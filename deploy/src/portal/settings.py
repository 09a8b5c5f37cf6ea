"""Settings of the `portal` command itself, read from `PORTAL_*` environment variables."""

from __future__ import annotations

from pydantic import Field

from contracts.kit.settings import CommonSettings


class PortalSettings(CommonSettings):
    """What `portal up` needs beyond what every part reads."""

    http_port: int = Field(default=8000, ge=1, le=65535, description="The gateway's port on 127.0.0.1.")
    smtp_url: str | None = Field(default=None, description="A real SMTP server; unset: the local mail sink.")

    @property
    def gateway_url(self) -> str:
        """Where the gateway answers on this machine."""
        return f"http://127.0.0.1:{self.http_port}"
