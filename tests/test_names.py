"""The one rule for names (contracts.names), applied by every entry point."""

import pytest

from contracts.names import InvalidName, clean_name, problem_with_name


@pytest.mark.parametrize(
    "name",
    ["Siân Ó Briain", "李小龍", "Nguyễn Thị Minh Khai", "O'Brien-Smith", "x" * 100, "Zoë  Ann"],
)
def test_names_of_every_script_are_taken_trimmed(name: str) -> None:
    assert clean_name(f"  {name}\u00a0") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "Ann\nBcc: all@example.org",
        "Ann\r\nX",
        "Tab\there",
        "Head\u202eretsaM",  # a right-to-left override: reads as another name
        "Sam\u200bPatel",  # zero-width space
        "Sam\u2066Patel",  # bidi isolate
        "soft\u00adhyphen",
        "x" * 101,
        "nul\x00",
    ],
)
def test_control_and_invisible_characters_and_overlong_names_are_refused(name: str) -> None:
    assert problem_with_name(name)
    with pytest.raises(InvalidName):
        clean_name(name)


def test_a_platform_event_naming_a_pupil_or_staff_member_badly_is_invalid() -> None:
    from pydantic import ValidationError

    from contracts.platform import PupilUpserted, StaffUpserted

    good = PupilUpserted(school_id="s", pupil_id="p", first_name=" Ann ", last_name="Lee")
    assert good.first_name == "Ann"
    with pytest.raises(ValidationError):
        PupilUpserted(school_id="s", pupil_id="p", first_name="Ann\u202e", last_name="Lee")
    with pytest.raises(ValidationError):
        StaffUpserted(school_id="s", staff_id="t", email="t@example.org", name="Sam\nBcc: x", role="teacher")
