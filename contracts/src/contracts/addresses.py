"""How every part reads and compares email addresses, so that they agree.

Identity looks accounts up by the normalised address, linking keys bars by it, notify counts
each recipient's daily emails by it and the gateway compares a parent's address with a bar's:
one rule, here.
"""

from __future__ import annotations

import re

# Deliberately loose: the verification email is the real test of an address.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MAX_LENGTH = 254


def normalise_email(email: str) -> str:
    """The form addresses are compared in: trimmed and lower-cased."""
    return email.strip().lower()


def looks_like_email(email: str) -> bool:
    """Whether `email` (trimmed) could be an address: something@domain.tld, at most 254 characters."""
    email = email.strip()
    return len(email) <= MAX_LENGTH and _EMAIL.match(email) is not None


def same_email(a: str, b: str) -> bool:
    """Whether two addresses are the same address."""
    return normalise_email(a) == normalise_email(b)
