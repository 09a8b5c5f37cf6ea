"""Settings of the gateway, read from `PORTAL_*` environment variables."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from contracts.kit.settings import CommonSettings, ops_host_field, ops_port_field

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class GatewaySettings(CommonSettings):
    """What the gateway needs beyond the common settings (which carry the port and the public
    and platform URLs): where to listen, how it trusts callers, and (in development) the local
    mail sink's Maildir."""

    http_host: str = Field(default="127.0.0.1", description="The address to listen on (PORTAL_HTTP_HOST).")
    ops_port: int | None = ops_port_field()
    ops_host: str = ops_host_field()
    dev_mail_dir: Path | None = Field(
        default=None,
        description="The local mail sink's Maildir (PORTAL_DEV_MAIL_DIR), set by `portal up` only while "
        "that sink is in use; `/dev/mail` lists it. Unset: `/dev/mail` does not exist.",
    )
    ready_timeout: float = Field(
        default=1.0, gt=0, le=30, description="Seconds `/ready` waits for each service's health answer."
    )
    session_cache_seconds: float = Field(
        default=300.0,
        ge=0,
        le=3600,
        description="How long a validated session is reused without asking identity (PORTAL_SESSION_CACHE_SECONDS); "
        "identity's revocation and account-change events drop entries at once on every replica, and a reconnect "
        "drops them all. 0 turns the cache off.",
    )
    session_cache_entries: int = Field(
        default=100_000, ge=0, description="At most this many sessions are cached (PORTAL_SESSION_CACHE_ENTRIES)."
    )
    revocation_wait_seconds: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="How long logout, login (ending the session it replaces), password change, and staff removing "
        "a parent's access (one pupil, all of them, or by a bar) wait to see their event broadcast, so that every "
        "replica has dropped the session or the link before the answer (PORTAL_REVOCATION_WAIT_SECONDS). A removal "
        "whose event does not come in time is logged as an error (`link_removal_not_seen`).",
    )
    links_cache_seconds: float = Field(
        default=300.0,
        ge=0,
        le=3600,
        description="How long a parent's linked children are remembered (PORTAL_LINKS_CACHE_SECONDS); linking's "
        "link events drop them at once on every replica.",
    )
    overview_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="How long a child's overview is served from the gateway's memory (PORTAL_OVERVIEW_CACHE_SECONDS, "
        "the overview service's own cache reads it too); overview's change notices drop entries at once, and no "
        "entry outlives the turn of a school's week. 0 asks overview every time.",
    )
    overview_cache_entries: int = Field(
        default=200_000,
        ge=0,
        description="At most this many children's overviews are kept (PORTAL_OVERVIEW_CACHE_ENTRIES).",
    )
    overview_timeout: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="How long the overview may take (PORTAL_OVERVIEW_TIMEOUT) before the answer is partial.",
    )
    rpc_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Deadline of a request to a service (PORTAL_RPC_TIMEOUT), in seconds."
    )
    handoff_key_file: Path | None = Field(
        default=None,
        description="PEM private key (Ed25519 or P-256) signing the platform handoff's tokens "
        "(PORTAL_HANDOFF_KEY_FILE); unset, one is generated under PORTAL_DATA_DIR and shared by every gateway "
        "using that directory. Its public key is at /.well-known/jwks.json, `kid` its RFC 7638 thumbprint.",
    )
    handoff_published_key_files: str = Field(
        default="",
        description="Comma-separated PEM keys also published at /.well-known/jwks.json but never used to sign "
        "(PORTAL_HANDOFF_PUBLISHED_KEY_FILES): the next key before a rotation, the previous one until its tokens "
        "have expired (docs/platform-handoff.md).",
    )
    handoff_token_seconds: int = Field(
        default=120,
        ge=10,
        le=300,
        description="Lifetime of a handoff token (PORTAL_HANDOFF_TOKEN_SECONDS), at most 5 minutes: it only has "
        "to survive the redirect.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is believed "
        "(PORTAL_TRUSTED_PROXIES); otherwise the socket peer is the client.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            ipaddress.ip_network(part, strict=False)  # raises a clear ValueError at start-up
        return value

    @model_validator(mode="after")
    def _ops_apart(self) -> GatewaySettings:
        if self.ops_port is not None and self.ops_port == self.http_port:
            # The ops endpoints must never be reachable where the public is.
            raise ValueError("PORTAL_OPS_PORT must differ from PORTAL_HTTP_PORT")
        return self

    @cached_property
    def trusted_proxy_networks(self) -> tuple[IpNetwork, ...]:
        """`trusted_proxies` parsed."""
        return tuple(
            ipaddress.ip_network(part, strict=False)
            for part in filter(None, (p.strip() for p in self.trusted_proxies.split(",")))
        )

    @property
    def secure_cookies(self) -> bool:
        """Cookies are `Secure` (and `__Host-` prefixed) when the portal is served over https."""
        return self.public_url.lower().startswith("https://")
