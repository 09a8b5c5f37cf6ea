"""How the gateway reaches the services: one typed client per service over a `Transport`.

Routes and pages ask `Clients`, never a subject: `clients.identity.login(...)`,
`clients.linking.staff(principal).classes()`, `clients.overview.get_raw(...)`. A service's
error arrives as `contracts.kit.rpc.RpcError` with its code, fields and `retry_after`, and is
answered over HTTP in one place (`gateway.errors.http_error`).
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.datastructures import State

from gateway.clients.health import HealthClient
from gateway.clients.identity import IdentityClient
from gateway.clients.linking import LinkingClient, StaffLinking, staff_scope
from gateway.clients.notify import NotifyClient
from gateway.clients.overview import OverviewClient
from gateway.clients.transport import Transport

__all__ = [
    "Clients",
    "HealthClient",
    "IdentityClient",
    "LinkingClient",
    "NotifyClient",
    "OverviewClient",
    "StaffLinking",
    "Transport",
    "get_clients",
    "staff_scope",
]

STATE_KEY = "clients"


@dataclass(frozen=True)
class Clients:
    """Every client the gateway uses, over one transport."""

    transport: Transport
    identity: IdentityClient
    linking: LinkingClient
    overview: OverviewClient
    health: HealthClient
    notify: NotifyClient

    @classmethod
    def over(cls, transport: Transport) -> Clients:
        """The clients asking through `transport`."""
        return cls(
            transport=transport,
            identity=IdentityClient(transport),
            linking=LinkingClient(transport),
            overview=OverviewClient(transport),
            health=HealthClient(transport),
            notify=NotifyClient(transport),
        )


def get_clients(state: State) -> Clients:
    """The application's clients."""
    return state[STATE_KEY]
