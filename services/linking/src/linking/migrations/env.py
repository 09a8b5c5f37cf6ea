"""Alembic environment of the linking service (run through `python -m linking migrate`)."""

from contracts.kit.migrations import run_env
from linking.tables import metadata

run_env(metadata)
