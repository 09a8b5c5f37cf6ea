"""The services' sentences a parent's page shows as they come (an error beside a field, the page
of a code that does not work), marked here so that the gateway's catalogue translates them.

The services answer in English, for every client alike; a page shows the translation when the
sentence is one of these, else the sentence as it is. A test checks that each is still written,
word for word, by the part that sends it.
"""

from __future__ import annotations

from contracts.kit.i18n import N_

SERVICE_MESSAGES = (
    # linking, redeeming or previewing a code (the second as a field's message)
    N_("this code is not valid: check it, or ask the school for a new one"),
    N_("This code is not valid: check it, or ask the school for a new one"),
    N_("this code has already linked as many carers as the school allows"),
    N_("This code has already linked as many carers as the school allows"),
    # identity, signing in and registering
    N_("The email address or password is not right."),
    N_("Confirm your email address first: use the link we emailed you."),
    N_("This link is not valid: it is unknown, expired, or already used."),
    N_("Use at least 12 characters; a few unrelated words make a good password."),
    # a password too easy to guess: why (zxcvbn's warnings, identity.passwords), then what to do
    N_("Straight rows of keys are easy to guess."),
    N_("Short keyboard patterns are easy to guess."),
    N_('Repeats like "aaa" are easy to guess.'),
    N_('Repeats like "abcabcabc" are only slightly harder to guess than "abc".'),
    N_('Sequences like "abc" or "6543" are easy to guess.'),
    N_("Recent years are easy to guess."),
    N_("Dates are often easy to guess."),
    N_("This is a top-10 common password."),
    N_("This is a top-100 common password."),
    N_("This is a very common password."),
    N_("This is similar to a commonly used password."),
    N_("A word by itself is easy to guess."),
    N_("Names and surnames by themselves are easy to guess."),
    N_("Common names and surnames are easy to guess."),
    N_("This password is too easy to guess."),
    N_("Choose a less common password, for example a few unrelated words."),
    N_("That email address already belongs to another account."),
    # the gateway's own answers for a status
    N_("Nothing was found at this address."),
    N_("Too many attempts: please wait and try again."),
    N_("Something went wrong on our side; please try again."),
    N_("The service is not available right now; please try again shortly."),
)
