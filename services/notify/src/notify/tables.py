"""The notify service's own tables. No other part reads them."""

from sqlalchemy.orm import registry
from sqlmodel import SQLModel

# A registry of its own keeps these tables out of other services' metadata when several
# services are imported into one process (tests, the local runner).
_registry = registry()


class Base(SQLModel, registry=_registry):
    """Base of every notify table."""


metadata = _registry.metadata
