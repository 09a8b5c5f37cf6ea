"""Link codes, their secrecy at rest, school settings' validation and the PDF's text, without
NATS or a database."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pytest
import segno
from cryptography.exceptions import InvalidTag

from linking import codes, school_settings, sheet
from linking.app import Settings
from linking.qr import QrCache, best_mask


def test_alphabet_has_no_look_alikes_and_59_bits() -> None:
    assert len(codes.ALPHABET) == len(set(codes.ALPHABET)) == 30
    assert not set("01OILU") & set(codes.ALPHABET)
    assert set(codes.ALPHABET) <= set("23456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert pytest.approx(12 * math.log2(30)) == codes.ENTROPY_BITS
    assert 58.5 < codes.ENTROPY_BITS < 59.5


def test_generated_codes_are_well_formed_unique_and_uniform() -> None:
    made = [codes.generate() for _ in range(20_000)]
    assert all(len(c) == 12 and set(c) <= set(codes.ALPHABET) for c in made)
    assert len(set(made)) == len(made)
    # Every letter at every position about equally often (a chi-squared test, 29 degrees of
    # freedom: above 70 happens by chance with probability < 1e-4).
    for position in (0, 5, 11):
        counts = Counter(c[position] for c in made)
        expected = len(made) / 30
        chi2 = sum((counts.get(ch, 0) - expected) ** 2 / expected for ch in codes.ALPHABET)
        assert chi2 < 70, (position, chi2)


def test_display_and_forgiving_normalisation() -> None:
    code = "ABCD2345WXYZ"
    assert codes.display(code) == "ABCD-2345-WXYZ"
    for typed in [
        "ABCD-2345-WXYZ",
        "abcd-2345-wxyz",
        " abcd 2345 wxyz ",
        "ABCD2345WXYZ",
        "ab cd-23 45—wx yz",
        "abcd_2345.wxyz\n",
    ]:
        assert codes.normalise(typed) == code, typed
    for bad in [
        "",
        "ABCD-2345-WXY",
        "ABCD-2345-WXYZA",
        "ABCD-2345-WXY0",
        "ABCD-2345-WXYI",
        "ÄBCD-2345-WXYZ",
        "ABCD/2345/WXYZ",
    ]:
        assert codes.normalise(bad) is None, bad


def test_codes_at_rest_are_hashed_with_a_key_and_encrypted_to_their_pupil() -> None:
    vault = codes.CodeVault(codes.new_key())
    other = codes.CodeVault(codes.new_key())
    code = codes.generate()
    assert vault.lookup_hash(code) == vault.lookup_hash(code)
    assert vault.lookup_hash(code) != other.lookup_hash(code), "the hash needs the key"
    assert len(vault.lookup_hash(code)) == 64
    blob = vault.encrypt(code, pupil_id="p1")
    assert code.encode() not in blob
    assert vault.encrypt(code, pupil_id="p1") != blob, "a fresh nonce each time"
    assert vault.decrypt(blob, pupil_id="p1") == code
    with pytest.raises(InvalidTag):
        vault.decrypt(blob, pupil_id="p2")  # moved to another pupil's row
    with pytest.raises(InvalidTag):
        other.decrypt(blob, pupil_id="p1")
    for bad in ["", "short", "!" * 44, codes.new_key()[:-4]]:
        with pytest.raises(codes.InvalidKey):
            codes.CodeVault(bad)


def test_development_key_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, linking_code_key=None)
    first = settings.code_key()
    assert (tmp_path / "linking-code.key").exists()
    assert oct(os.stat(tmp_path / "linking-code.key").st_mode & 0o777) == "0o600"
    assert Settings(data_dir=tmp_path).code_key() == first, "a restart keeps codes valid"
    codes.CodeVault(first)
    chosen = codes.new_key()
    assert Settings(data_dir=tmp_path, linking_code_key=chosen).code_key() == chosen
    assert "linking_code_key" not in repr(Settings(data_dir=tmp_path, linking_code_key=chosen))


def test_settings_derive_public_and_platform_urls() -> None:
    s = Settings(http_port=8123)
    assert (s.public_url, s.platform_url) == ("http://127.0.0.1:8123", "http://127.0.0.1:8123/platform")
    s = Settings(public_url="https://p.example/", platform_url="https://lp.example/")
    assert (s.public_url, s.platform_url) == ("https://p.example", "https://lp.example")


def test_school_settings_validation_names_every_bad_field() -> None:
    ok = school_settings.validate(
        {
            "max_carers_per_code": 6,
            "printed_code_days": 365,
            "invitation_days": 1,
            "aup_text": "  Be kind.  ",
            "homework_url": " https://lp.example/hw?p={pupil_id} ",
            "email_parent_on_removal": False,
            "aup_version": "ignored",
        }
    )
    assert ok == {
        "max_carers_per_code": 6,
        "printed_code_days": 365,
        "invitation_days": 1,
        "aup_text": "Be kind.\n",
        "homework_url": "https://lp.example/hw?p={pupil_id}",
        "email_parent_on_removal": False,
    }
    with pytest.raises(school_settings.Invalid) as info:
        school_settings.validate(
            {
                "max_carers_per_code": 21,
                "printed_code_days": True,
                "invitation_days": 1.5,
                "aup_text": "x" * 20_001,
                "homework_url": "https://lp.example/{pupil}",
                "files_url": "javascript:alert(1)//{pupil_id}",
                "messages_url": "https://lp.example/{pupil_id",
                "email_parent_on_removal": "yes",
                "nonsense": 1,
            }
        )
    assert set(info.value.problems) == {
        "max_carers_per_code",
        "printed_code_days",
        "invitation_days",
        "aup_text",
        "homework_url",
        "files_url",
        "messages_url",
        "email_parent_on_removal",
        "nonsense",
    }


def test_policy_version_follows_the_text() -> None:
    v = school_settings.aup_version
    assert v("Be kind.") == v("Be kind.\n") != v("Be nice.")
    assert v(school_settings.DEFAULT_AUP) == school_settings.DEFAULT_AUP_VERSION


def test_pdf_text_keeps_what_the_core_font_has() -> None:
    assert sheet.pdf_text("Zoë Ørsted-Müller") == "Zoë Ørsted-Müller"
    assert sheet.pdf_text("Łukasz Dąbrowski") == "Lukasz Dabrowski"
    assert sheet.pdf_text("Şule Çelik") == "Sule Çelik"
    assert sheet.pdf_text("王小明") == "???"


def test_qr_codes_are_full_qr_with_the_stored_mask() -> None:
    url = "http://127.0.0.1:8000/link/ABCD-EFGH-JKMN"
    mask = best_mask(url)
    rendering = QrCache().get(url, mask)
    assert rendering.qr.is_micro is False
    assert rendering.qr.mask == mask == segno.make_qr(url, error="m").mask
    assert rendering.qr.error in ("M", "Q", "H")
    cache = QrCache(capacity=2)
    a = cache.get("http://x/link/A", 1)
    assert cache.get("http://x/link/A", 1) is a and cache.hits == 1
    cache.get("http://x/link/B", 1)
    cache.get("http://x/link/C", 1)
    assert cache.get("http://x/link/A", 1) is not a, "least recently used dropped"
    cache.forget({"http://x/link/A"})
    assert all(k[0] != "http://x/link/A" for k in cache._items)
