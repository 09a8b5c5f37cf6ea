"""The rules of redeeming a code, over facts read beforehand: no database, no clock.

`links.Links.redeem` reads the facts in the redemption's transaction (the code's row locked),
asks `decide`, and applies the decision. The rules are checked in this order, and the first
that fails answers:

1. the code is well formed, and a real redemption names its parent (`check_request`);
2. the code exists, is not revoked and has not expired;
3. its pupil is at the code's school (has not left, nor moved to another school);
4. a signed-in parent's verified address is not barred from the pupil;
5. a parent already linked to the pupil gets their link back (nothing else is checked);
6. a parent whom staff or a bar removed cannot come back through the same code;
7. a printed code links at most the school's number of carers; an invitation's code works
   while its invitation is open;
8. the school's acceptable-use policy is accepted, now or before;
9. a dry run stops here;
10. a registration's address barred from the pupil links nothing, and is answered as a success;
11. otherwise the link is made, active if the parent is verified.

Everything refused for what the code is, or for a bar, answers `invalid_code` with one sentence,
so nobody learns whether a code exists, expired, or is barred to them.

Registering answers 202 whatever the address (anyone may type anyone's address), so a
registration must not answer differently for a barred address: its dry run does not look at the
bars, and the redemption that follows once the account exists quietly makes no link (rule 10),
after every other rule, so that nothing else it answers differs either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from contracts import linking as contract
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcFailure, field_errors, invalid
from linking import codes
from linking.tables import AWAITING, LINKED, PRINTED

log = get_logger("linking.redemption")

INVALID_CODE = "this code is not valid: check it, or ask the school for a new one"
CODE_FULL = "this code has already linked as many carers as the school allows"
AUP_REQUIRED = "accept the school's acceptable-use policy first (accept_aup)"
# An invitation's code links while its invitation is in one of these states.
OPEN_INVITATION = ("invited", "bounced")


def invalid_code() -> RpcFailure:
    """`invalid_code`: the same answer whatever is wrong with the code."""
    return RpcFailure(contract.E_INVALID_CODE, INVALID_CODE)


@dataclass(frozen=True)
class CodeFacts:
    """The stored code a parent typed."""

    kind: str  # PRINTED or INVITATION
    revoked: bool
    expires_at: datetime


@dataclass(frozen=True)
class RedemptionFacts:
    """What the rules look at: the request, and what was read for it.

    Facts that do not matter for the request are left at their defaults: nothing past the code
    is read for a code that does not exist, nothing past the pupil for a pupil who left.
    """

    now: datetime
    parent_id: str | None  # None: a registration's dry run, before the account exists
    dry_run: bool
    accept_aup: bool  # the request accepts the school's policy now
    code: CodeFacts | None  # None: no such code
    pupil_id: str = ""
    pupil_at_school: bool = False  # the code's pupil is in the roster copy and has not left
    barred: bool = False  # the caller's address is barred from the pupil
    registering: bool = False  # the redemption of a registration, for the account it just made
    already_linked: bool = False  # this parent has a standing link to the pupil
    removed_via_code: bool = False  # staff or a bar ended a link this parent made with this code
    other_carers: int = 0  # other parents ever linked through this (printed) code
    max_carers: int = 0  # the school's setting
    invitation_status: str | None = None  # an invitation's code: its invitation's status
    policy_accepted_before: bool = False  # this parent accepted the school's current policy
    parent_verified: bool = False  # the parent's address is verified (the link is active at once)


class Outcome(Enum):
    """What a redemption that passes the rules does."""

    ALREADY_LINKED = "already_linked"  # answer with the parent's existing link
    WOULD_LINK = "would_link"  # a dry run: the code would link
    NOT_LINKED = "not_linked"  # a registration's barred address: answered as a success, no link
    LINK = "link"  # make the link


@dataclass(frozen=True)
class Decision:
    """The outcome and, for a new link, how it is made."""

    outcome: Outcome
    status: str = ""  # the new link's: LINKED, or AWAITING the parent's verification
    record_acceptance: bool = False  # store the policy acceptance the request carries
    use_up_invitation: bool = False  # the invitation is accepted and its code stops working


def check_request(typed: str, *, dry_run: bool, parent_id: str | None) -> str:
    """The normalised code, once the request alone (before any read) can be redeemed."""
    code = codes.normalise(typed)
    if code is None:
        raise invalid_code()
    if not dry_run and not parent_id:
        raise invalid(parent_id="required")
    return code


def decide(facts: RedemptionFacts) -> Decision:
    """The decision the rules give for these facts, or the `RpcFailure` the caller sees."""
    code = _usable_code(facts)
    if facts.parent_id and facts.already_linked:
        return Decision(Outcome.ALREADY_LINKED)
    _check_may_link(facts, code)
    if facts.dry_run:
        return Decision(Outcome.WOULD_LINK)
    if facts.barred:
        # Only a registration reaches this (`_usable_code` refused the others).
        log.info("redeem_barred", pupil_id=facts.pupil_id, parent_id=facts.parent_id, registering=True)
        return Decision(Outcome.NOT_LINKED)
    return Decision(
        Outcome.LINK,
        status=LINKED if facts.parent_verified else AWAITING,
        record_acceptance=facts.accept_aup,
        use_up_invitation=code.kind != PRINTED,
    )


def _usable_code(facts: RedemptionFacts) -> CodeFacts:
    # Rules 2 to 4: whatever the parent, this code may link this pupil.
    code = facts.code
    if code is None or code.revoked or code.expires_at <= facts.now:
        raise invalid_code()
    if not facts.pupil_at_school:
        raise invalid_code()
    if facts.barred and not (facts.dry_run or facts.registering):
        # Answered like a bad code, so that a bar is not revealed.
        log.info("redeem_barred", pupil_id=facts.pupil_id, parent_id=facts.parent_id)
        raise invalid_code()
    return code


def _check_may_link(facts: RedemptionFacts, code: CodeFacts) -> None:
    # Rules 6 to 8, for a parent not yet linked to the pupil.
    if facts.parent_id and facts.removed_via_code:
        # Staff removed this parent's access: the same code must not undo that.
        raise invalid_code()
    if code.kind == PRINTED:
        if facts.other_carers >= facts.max_carers:
            raise RpcFailure(contract.E_CODE_FULL, CODE_FULL)
    elif facts.invitation_status not in OPEN_INVITATION:
        raise invalid_code()
    if not (facts.accept_aup or facts.policy_accepted_before):
        raise RpcFailure(contract.E_AUP_REQUIRED, AUP_REQUIRED, fields=field_errors(accept_aup=AUP_REQUIRED))
