"""How every part checks a person's name, so that a name refused in one place is refused in all.

A name is shown to staff, to parents and in emails. Line breaks break email headers and CSV
exports; bidi overrides and zero-width characters let one name pass for another on a staff
page. So a name is 1 to 100 characters after trimming, with no character of the Unicode
categories Cc (controls: line breaks, tabs) or Cf (invisible formatting: bidi overrides,
zero-width joiners, soft hyphens). Everything else, any script, is a name.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field

MAX_LENGTH = 100

# The API's error code for a refused name (HTTP 422).
E_INVALID_NAME = "invalid_name"


class InvalidName(ValueError):
    """A name that cannot be taken; `str()` is a sentence for people."""


def problem_with_name(value: str) -> str | None:
    """What is wrong with `value` as a name, as a sentence, or None when it is a name."""
    name = value.strip()
    if not name:
        return "Enter a name."
    if len(name) > MAX_LENGTH:
        return f"A name is at most {MAX_LENGTH} characters."
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf"):
            return "A name cannot contain line breaks, tabs or invisible formatting characters."
    return None


def clean_name(value: str) -> str:
    """The name, trimmed; `InvalidName` when it is not one."""
    problem = problem_with_name(value)
    if problem is not None:
        raise InvalidName(problem)
    return value.strip()


def _validated(value: str) -> str:
    problem = problem_with_name(value)
    if problem is not None:
        raise ValueError(problem)  # pydantic reports it as this field's error
    return value.strip()


# A person's name inside a message: a message carrying another is refused as invalid (an event
# with one is dead-lettered, a request answered with a validation error).
PersonName = Annotated[
    str,
    AfterValidator(_validated),
    Field(description="1 to 100 characters after trimming; no control or invisible formatting characters"),
]
