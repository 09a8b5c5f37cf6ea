"""Passwords: argon2id hashes, and the policy a new password must meet.

The policy is NIST SP 800-63B's: at least 12 characters and at most 256 (passphrases welcome),
no composition rules, and refused when it is commonly used or trivially guessable (zxcvbn's
dictionaries of leaked passwords, names, words and keyboard patterns, plus the account's own
email and name).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn  # type: ignore[import-untyped]  # zxcvbn has no type hints; its stubs (types-zxcvbn) are not installed

T = TypeVar("T")

MIN_LENGTH = 12
MAX_LENGTH = 256
# zxcvbn refuses longer input (it raises), and its cost grows with the length: it judges the
# first 72 characters, which a long passphrase's strength already shows in.
JUDGED_LENGTH = 72

# OWASP's minimum for argon2id (m=19 MiB, t=2, p=1); the settings may only go above it.
OWASP_MIN_MEMORY_KIB = 19 * 1024
OWASP_MIN_TIME_COST = 2


# zxcvbn's warnings, as it writes them (feedback.py): a page translates each, so only these are
# passed on; one it adds in a later release reads as the general sentence until it is added here.
ZXCVBN_WARNINGS = frozenset(
    {
        "Straight rows of keys are easy to guess.",
        "Short keyboard patterns are easy to guess.",
        'Repeats like "aaa" are easy to guess.',
        'Repeats like "abcabcabc" are only slightly harder to guess than "abc".',
        'Sequences like "abc" or "6543" are easy to guess.',
        "Recent years are easy to guess.",
        "Dates are often easy to guess.",
        "This is a top-10 common password.",
        "This is a top-100 common password.",
        "This is a very common password.",
        "This is similar to a commonly used password.",
        "A word by itself is easy to guess.",
        "Names and surnames by themselves are easy to guess.",
        "Common names and surnames are easy to guess.",
    }
)
TOO_EASY = "This password is too easy to guess."
INSTEAD = "Choose a less common password, for example a few unrelated words."


class WeakPassword(ValueError):
    """The password does not meet the policy; the message says why, for the person."""

    code = "weak_password"


class PasswordTooLong(WeakPassword):
    """Longer than the policy allows."""

    code = "password_too_long"


def check_policy(password: str, *, email: str = "", name: str = "") -> None:
    """Raise `WeakPassword` with a clear reason unless `password` may be used."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"Use at least {MIN_LENGTH} characters; a few unrelated words make a good password.")
    if len(password) > MAX_LENGTH:
        raise PasswordTooLong(f"Use at most {MAX_LENGTH} characters.")
    hints = [h[:JUDGED_LENGTH] for h in (email, email.split("@")[0], name, *name.split()) if h]
    result = zxcvbn(password[:JUDGED_LENGTH], user_inputs=hints)
    if result["score"] < 2:
        warning = result["feedback"].get("warning") or ""
        raise WeakPassword(f"{warning if warning in ZXCVBN_WARNINGS else TOO_EASY} {INSTEAD}")


@dataclass(frozen=True)
class HashParams:
    """argon2id cost parameters."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    def __post_init__(self) -> None:
        if self.memory_kib < OWASP_MIN_MEMORY_KIB or self.time_cost < OWASP_MIN_TIME_COST or self.parallelism < 1:
            raise ValueError("argon2id parameters below OWASP's minimum (m=19456 KiB, t=2, p=1)")


class PasswordsBusy(Exception):
    """Every argon2 slot stayed taken for longer than the queue may wait."""


class Passwords:
    """Hashes and verifies off the event loop (argon2 takes tens of milliseconds by design),
    at most `concurrency` at once.

    Each hash holds `memory_kib` of memory and a core for its duration: without a cap, a flood
    of logins or registrations would take every core and as many times 64 MiB as there are
    requests in flight. Beyond the cap they queue, and one that waited `queue_seconds` gives up
    with `PasswordsBusy` (the caller answers "try again shortly") rather than pile up behind
    answers nobody waits for any more.
    """

    def __init__(self, params: HashParams, *, concurrency: int = 2, queue_seconds: float = 3.0) -> None:
        self.hasher = PasswordHasher(
            time_cost=params.time_cost, memory_cost=params.memory_kib, parallelism=params.parallelism
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._queue_seconds = queue_seconds
        # Verifying against this when the account does not exist takes as long as a real
        # check, so timing does not tell who is registered.
        self._dummy = self.hasher.hash("not a real password, only for timing")

    async def _run(self, work: Callable[[], T]) -> T:
        try:
            async with asyncio.timeout(self._queue_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise PasswordsBusy from None
        try:
            return await asyncio.to_thread(work)
        finally:
            self._slots.release()

    async def hash(self, password: str) -> str:
        """An argon2id hash of `password`; `PasswordsBusy` when no slot came free in time."""
        return await self._run(lambda: self.hasher.hash(password))

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored` (a missing hash never matches); `PasswordsBusy`
        when no slot came free in time."""

        def run() -> bool:
            try:
                return self.hasher.verify(stored or self._dummy, password) and stored is not None
            except (VerificationError, InvalidHashError):
                return False

        return await self._run(run)

    def needs_rehash(self, stored: str) -> bool:
        """Whether `stored` was made with other parameters than today's."""
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
