"""Alembic environment of the identity service (run through `python -m identity migrate`)."""

from contracts.kit.migrations import run_env
from identity.tables import metadata

run_env(metadata)
