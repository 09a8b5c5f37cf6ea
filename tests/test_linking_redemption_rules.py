"""The redemption rules without a database: each rule once, with the answer a caller would see."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from contracts import linking as contract
from contracts.kit.rpc import RpcFailure
from linking.redemption import (
    AUP_REQUIRED,
    CODE_FULL,
    INVALID_CODE,
    CodeFacts,
    Decision,
    Outcome,
    RedemptionFacts,
    check_request,
    decide,
)
from linking.tables import AWAITING, INVITATION, LINKED, PRINTED

NOW = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
CODE = "ABCD-EFGH-JKMN"


# A printed code a verified parent redeems, accepting the policy: every rule passes.
GOOD = RedemptionFacts(
    now=NOW,
    parent_id="parent-1",
    dry_run=False,
    accept_aup=True,
    code=CodeFacts(kind=PRINTED, revoked=False, expires_at=NOW + timedelta(days=30)),
    pupil_id="amy",
    pupil_at_school=True,
    max_carers=4,
    parent_verified=True,
)
# The same with an invitation's code, its invitation open.
INVITED = replace(
    GOOD,
    code=CodeFacts(kind=INVITATION, revoked=False, expires_at=NOW + timedelta(days=14)),
    invitation_status="invited",
)


def refused(f: RedemptionFacts) -> RpcFailure:
    """The failure `decide` raises for these facts."""
    with pytest.raises(RpcFailure) as info:
        decide(f)
    return info.value


def assert_invalid_code(f: RedemptionFacts) -> None:
    """`decide` answers these facts as a bad code, with the one sentence for every bad code."""
    failure = refused(f)
    assert (failure.code, failure.detail) == (contract.E_INVALID_CODE, INVALID_CODE)


# -- the request alone ---------------------------------------------------------------------------


def test_a_typed_code_is_normalised() -> None:
    assert check_request(" abcd efgh-jkmn ", dry_run=False, parent_id="p") == "ABCDEFGHJKMN"


def test_a_malformed_code_is_invalid_before_anything_else() -> None:
    with pytest.raises(RpcFailure) as info:
        check_request("ABCD-EFGH", dry_run=False, parent_id=None)
    assert (info.value.code, info.value.detail) == (contract.E_INVALID_CODE, INVALID_CODE)


def test_a_redemption_that_is_not_a_dry_run_names_its_parent() -> None:
    with pytest.raises(RpcFailure) as info:
        check_request(CODE, dry_run=False, parent_id=None)
    assert info.value.code == "validation_error"
    assert [(f.field, f.message) for f in info.value.fields] == [("parent_id", "required")]
    assert check_request(CODE, dry_run=True, parent_id=None) == "ABCDEFGHJKMN"


# -- the code and its pupil ------------------------------------------------------------------------


def test_no_such_code_is_invalid() -> None:
    assert_invalid_code(replace(GOOD, code=None))


def test_a_revoked_code_is_invalid() -> None:
    assert_invalid_code(replace(GOOD, code=CodeFacts(kind=PRINTED, revoked=True, expires_at=NOW + timedelta(days=1))))


def test_a_code_is_invalid_from_the_moment_it_expires() -> None:
    assert_invalid_code(replace(GOOD, code=CodeFacts(kind=PRINTED, revoked=False, expires_at=NOW)))
    assert (
        decide(
            replace(GOOD, code=CodeFacts(kind=PRINTED, revoked=False, expires_at=NOW + timedelta(seconds=1)))
        ).outcome
        is Outcome.LINK
    )


def test_a_pupil_who_left_cannot_be_linked() -> None:
    assert_invalid_code(replace(GOOD, pupil_at_school=False))


def test_a_barred_address_is_answered_like_a_bad_code() -> None:
    assert_invalid_code(replace(GOOD, barred=True))
    assert_invalid_code(replace(GOOD, barred=True, already_linked=True))


def test_a_registration_answers_the_same_for_a_barred_address_and_links_nothing() -> None:
    registering = replace(GOOD, registering=True, parent_verified=False)
    assert decide(replace(GOOD, dry_run=True, parent_id=None, barred=True)) == Decision(Outcome.WOULD_LINK)
    assert decide(replace(registering, barred=True)) == Decision(Outcome.NOT_LINKED)
    assert decide(registering).outcome is Outcome.LINK
    # Every other rule answers as it would for any address: only the link is left out.
    assert refused(replace(registering, barred=True, other_carers=4)).code == contract.E_CODE_FULL
    assert_invalid_code(replace(registering, barred=True, pupil_at_school=False))


# -- the parent ------------------------------------------------------------------------------------


def test_a_parent_already_linked_gets_their_link_whatever_else_holds() -> None:
    f = replace(GOOD, already_linked=True, other_carers=9, accept_aup=False, removed_via_code=True)
    assert decide(f) == Decision(Outcome.ALREADY_LINKED)
    assert decide(replace(f, dry_run=True)) == Decision(Outcome.ALREADY_LINKED)


def test_a_parent_removed_by_staff_or_a_bar_cannot_come_back_through_the_same_code() -> None:
    assert_invalid_code(replace(GOOD, removed_via_code=True))


# -- the code's room ------------------------------------------------------------------------------


def test_a_printed_code_links_up_to_the_schools_number_of_carers() -> None:
    assert decide(replace(GOOD, other_carers=3, max_carers=4)).outcome is Outcome.LINK
    failure = refused(replace(GOOD, other_carers=4, max_carers=4))
    assert (failure.code, failure.detail) == (contract.E_CODE_FULL, CODE_FULL)


def test_an_invitations_code_works_while_its_invitation_is_open() -> None:
    assert decide(INVITED).use_up_invitation
    assert decide(replace(INVITED, invitation_status="bounced")).outcome is Outcome.LINK
    for status in ("accepted", "revoked", None):
        assert_invalid_code(replace(INVITED, invitation_status=status))


def test_an_invitation_is_never_full() -> None:
    assert decide(replace(INVITED, other_carers=99, max_carers=1)).outcome is Outcome.LINK


# -- the policy, dry runs, the new link ----------------------------------------------------------------


def test_the_schools_policy_must_be_accepted_now_or_before() -> None:
    failure = refused(replace(GOOD, accept_aup=False))
    assert (failure.code, failure.detail) == (contract.E_AUP_REQUIRED, AUP_REQUIRED)
    assert [(f.field, f.message) for f in failure.fields] == [("accept_aup", AUP_REQUIRED)]
    before = decide(replace(GOOD, accept_aup=False, policy_accepted_before=True))
    assert before.outcome is Outcome.LINK and not before.record_acceptance


def test_a_dry_run_stops_once_every_rule_passed() -> None:
    assert decide(replace(GOOD, dry_run=True, parent_id=None)) == Decision(Outcome.WOULD_LINK)
    failure = refused(replace(GOOD, dry_run=True, parent_id=None, accept_aup=False))
    assert failure.code == contract.E_AUP_REQUIRED


def test_a_new_link_is_active_once_the_parent_is_verified() -> None:
    assert decide(GOOD) == Decision(Outcome.LINK, status=LINKED, record_acceptance=True)
    assert decide(replace(GOOD, parent_verified=False)).status == AWAITING


def test_the_first_failing_rule_answers() -> None:
    # Full and without the policy: the code's room is checked first.
    assert refused(replace(GOOD, other_carers=4, accept_aup=False)).code == contract.E_CODE_FULL
    # Removed through this code and the code full: the removal answers.
    assert refused(replace(GOOD, removed_via_code=True, other_carers=4)).code == contract.E_INVALID_CODE
