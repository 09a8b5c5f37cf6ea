"""Alembic environment of the notify service (run through `python -m notify migrate`)."""

from contracts.kit.migrations import run_env
from notify.tables import metadata

run_env(metadata)
