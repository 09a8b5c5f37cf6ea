"""The `portal` command: run, migrate and feed the Parent Portal."""
