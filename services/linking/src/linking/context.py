"""What every part of linking shares: the runtime, the settings' figures, the keys and the clock.

Each part (`schools`, `printed`, `links`, `bars`, `guessing`) is given one `LinkingContext` and
the other parts it uses, when it is made; nothing is attached afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.base import utcnow
from contracts.kit.db import Database
from contracts.kit.outbox import UnitOfWork, unit_of_work
from contracts.kit.runtime import ServiceRuntime
from linking import codes, school_settings
from linking.addresses import AddressVault
from linking.tables import AuditRow, School, SchoolSetting, TrustSetting


@dataclass(frozen=True)
class Limits:
    """The figures of the guessing rules (from the service's settings)."""

    parent_failures_per_hour: int = 10
    client_failures_per_hour: int = 100
    alert_trust_failures_per_minute: int = 50
    alert_deployment_failures_per_minute: int = 500


@dataclass
class LinkingContext:
    """One replica's shared state: its runtime, URLs, guessing figures, key and clock."""

    runtime: ServiceRuntime
    public_url: str
    platform_url: str
    # Returns the code keys (the settings, or the development key file): read at start-up.
    key_provider: Callable[[], codes.CodeKeys]
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], datetime] = utcnow
    _vault: codes.CodeVault | None = field(default=None, init=False, repr=False)
    _addresses: AddressVault | None = field(default=None, init=False, repr=False)

    @property
    def db(self) -> Database:
        """The service's database."""
        return self.runtime.db

    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A transaction whose events are relayed after it commits."""
        return unit_of_work(self.runtime.db, self.runtime.relay)

    def now(self) -> datetime:
        """The current time (UTC)."""
        return self.clock()

    @property
    def vault(self) -> codes.CodeVault:
        """The code vault; its keys are read (or, in development, made) at start-up or first use."""
        if self._vault is None:
            keys = self.key_provider()
            self._vault = codes.CodeVault(keys.current, keys.old)
        return self._vault

    @property
    def addresses(self) -> AddressVault:
        """The address vault (bars, and callers' network addresses), under the same keys."""
        if self._addresses is None:
            keys = self.key_provider()
            self._addresses = AddressVault(keys.current, keys.old)
        return self._addresses

    async def load_keys(self) -> None:
        """Read (or make) the keys before serving, and refuse to serve if linking's database
        holds codes or bars that none of them wrote: a missing, malformed or changed key fails
        the start (`codes.CodeKeyError`, naming the settings), not a redemption or a bar."""
        from linking import keys  # it reads the bars' tables through `linking.bars`, which imports this module

        try:
            _ = self.vault, self.addresses
        except codes.InvalidKey as exc:
            raise codes.CodeKeyError(str(exc)) from exc
        found = await keys.foreign_rows(self.db, self.vault, self.addresses)
        if found:
            raise codes.CodeKeyError(keys.foreign_key_message(found))

    def link_url(self, code: str) -> str:
        """What a QR code holds: `PUBLIC_URL/link/XXXX-XXXX-XXXX`."""
        return f"{self.public_url}/link/{codes.display(code)}"

    def settings_of(
        self, school_id: str, row: SchoolSetting | None, trust_row: TrustSetting | None = None
    ) -> school_settings.Effective:
        """A school's settings from its stored row over its trust's (None: every default)."""
        return school_settings.effective(school_id, row, platform_url=self.platform_url, trust_row=trust_row)

    async def trust_settings_of(self, s: AsyncSession, school_id: str) -> TrustSetting | None:
        """The stored defaults of the school's trust, if it has any."""
        school = await s.get(School, school_id)
        return await s.get(TrustSetting, school.trust_id) if school is not None else None

    async def read_settings(self, s: AsyncSession, school_id: str) -> school_settings.Effective:
        """A school's settings, read in the caller's session."""
        return self.settings_of(
            school_id, await s.get(SchoolSetting, school_id), await self.trust_settings_of(s, school_id)
        )

    def audit(
        self,
        uow: UnitOfWork,
        *,
        pupil_id: str,
        school_id: str,
        actor: str,
        action: str,
        parent_id: str | None = None,
        reason: str = "",
    ) -> None:
        """Append one row to the pupil's audit trail (in the caller's transaction)."""
        uow.session.add(
            AuditRow(
                pupil_id=pupil_id,
                school_id=school_id,
                at=self.now(),
                actor=actor,
                action=action,
                parent_id=parent_id,
                reason=reason,
            )
        )
