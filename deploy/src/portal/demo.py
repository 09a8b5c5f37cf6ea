"""Demo data for `portal up --demo`: a trust with schools, classes, pupils, staff and activity.

A placeholder until the demo publisher lands (it plays the platform: roster, homework,
messages and stars events, plus staff accounts to log in with).
"""

from __future__ import annotations

from portal.settings import PortalSettings


def seed_demo(settings: PortalSettings) -> list[str]:
    """Seed the demo trust into the running portal; return the lines telling how to log in."""
    return []
