"""`portal up --demo`: a real portal seeded with the demo trust, used as a visitor would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from portal import demo
from portal.natsserver import free_port

PORTAL = str(Path(sys.executable).parent / "portal")
LOGINS_WITHIN = 75.0

pytestmark = pytest.mark.slow


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(overrides)
    return env


def _wait_for_logins(proc: subprocess.Popen, out: Path, err: Path) -> str:
    deadline = time.monotonic() + LOGINS_WITHIN
    while time.monotonic() < deadline:
        text = out.read_text()
        if "trust admin" in text:
            return text
        if "seeding the demo data failed" in err.read_text() or proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"no demo logins printed\n--- stdout\n{out.read_text()}\n--- stderr (tail)\n{err.read_text()[-4000:]}")


def _login(http: httpx.Client, email: str) -> dict[str, str]:
    r = http.post("/api/v1/auth/login", json={"email": email, "password": demo.PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _up(tmp_path: Path, name: str) -> tuple[subprocess.Popen, int, Path, Path]:
    port = free_port()
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    proc = subprocess.Popen(
        [PORTAL, "up", "--demo"],
        env=_env(PORTAL_DATA_DIR=str(tmp_path / "data"), PORTAL_HTTP_PORT=str(port)),
        stdout=out.open("w"), stderr=err.open("w"), stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    return proc, port, out, err


def _stop(proc: subprocess.Popen, err: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    assert code == 0, err.read_text()[-2000:]


def test_demo_trust_is_seeded_and_usable(tmp_path: Path) -> None:
    proc, port, out, err = _up(tmp_path, "first")
    try:
        printed = _wait_for_logins(proc, out, err)
        three = next(p for p in demo.PARENTS if len(p.children) == 3)
        one = next(p for p in demo.PARENTS if len(p.children) == 1)
        teacher, school_admin, trust_admin = (
            next(s for s in demo.STAFF if s.role == r) for r in ("teacher", "school_admin", "trust_admin")
        )
        for email in (three.email, one.email, teacher.email, school_admin.email, trust_admin.email):
            assert email in printed
        assert demo.PASSWORD in printed

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            auth = _login(http, three.email)
            children = http.get("/api/v1/me/children", headers=auth).json()
            assert {c["pupil_id"] for c in children} == {c.pupil_id for c in three.children}
            assert {c["status"] for c in children} == {"linked"}

            overview = http.get("/api/v1/me/overview", headers=auth).json()["children"]
            assert len(overview) == 3
            for child in overview:
                assert not child["partial"]
                assert child["outstanding_homework"] > 0 and child["next_due"]
                assert child["unread_messages"] > 0
                assert child["stars_this_week"] > 0

            staff = _login(http, teacher.email)
            classes = http.get("/api/v1/classes", headers=staff).json()
            assert {c["school_id"] for c in classes} == {teacher.school_id}
            assert len(classes) == 3
            assert all(c["pupil_count"] == demo.PUPILS_PER_CLASS for c in classes)
            assert sum(c["linked_pupil_count"] for c in classes) >= 3
        # The journey above (roster, staff, registration, verification email, links, overview)
        # ran on NATS with a user per part: nothing any part needed was refused.
        nats_log = (tmp_path / "data" / "nats.log").read_text()
        assert "Permissions Violation" not in nats_log
        assert "Authorization Violation" not in nats_log
        assert "nats_permission_refused" not in err.read_text()
    finally:
        _stop(proc, err)

    # The same data directory again: nothing fails, nothing is added twice.
    proc, port, out, err = _up(tmp_path, "second")
    try:
        assert "already seeded" in _wait_for_logins(proc, out, err)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            children = http.get("/api/v1/me/children", headers=_login(http, three.email)).json()
            assert sorted(c["pupil_id"] for c in children) == sorted(c.pupil_id for c in three.children)
    finally:
        _stop(proc, err)
