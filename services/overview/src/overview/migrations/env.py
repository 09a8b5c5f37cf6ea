"""Alembic environment of the overview service (run through `python -m overview migrate`)."""

from contracts.kit.migrations import run_env
from overview.tables import metadata

run_env(metadata)
