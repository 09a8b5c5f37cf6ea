"""`portal roster import` and `import-staff`, run as real processes against a real NATS with the
real linking (and identity) service running in this process.

One linking replica for the module: each test imports schools of its own (fresh ids).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from helpers import eventually
from natsauth import authed_nats

from contracts import linking as contract
from contracts import streams
from contracts.kit.rpc import call
from contracts.kit.service import migrate
from contracts.kit.streams import ensure_streams
from identity import app as identity_app
from linking import app as linking_app
from linking.codes import new_key

PORTAL = str(Path(sys.executable).with_name("portal"))
CHEAP = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}
HEADER = "trust_id,trust_name,school_id,school_name,timezone,class_id,class_name,pupil_id,first_name,last_name"


def run_portal(args: list[str], nats_url: str | None, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    full.pop("PORTAL_NATS_URL", None)
    if nats_url:
        full["PORTAL_NATS_URL"] = nats_url
    return subprocess.run([PORTAL, *args], capture_output=True, text=True, env=full, timeout=60)


async def portal(*args: str, nats_url: str | None, **env: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(run_portal, list(args), nats_url, **env)


class Linking:
    """The module's NATS and linking replica, and a client connection."""

    def __init__(self, url: str, nc: nats.NATS) -> None:
        self.url, self.nc = url, nc

    async def classes(self, *school_ids: str) -> dict[str, tuple[str, str, int]]:
        """class_id -> (name, school_name, pupil_count), as staff of those schools see them."""
        scope = contract.StaffScope(school_ids=list(school_ids))
        reply = await call(self.nc, contract.CLASSES, contract.ClassesRequest(scope=scope), timeout=5)
        return {c.class_id: (c.name, c.school_name, c.pupil_count) for c in reply.classes}

    async def schools(self, *school_ids: str) -> dict[str, tuple[str, str, str]]:
        scope = contract.StaffScope(school_ids=list(school_ids))
        reply = await call(self.nc, contract.SCHOOLS, contract.SchoolsRequest(scope=scope), timeout=5)
        return {s.school_id: (s.trust_id, s.name, s.timezone) for s in reply.schools}

    async def stream_messages(self) -> int:
        return (await self.nc.jetstream().stream_info(streams.PLATFORM.name)).state.messages


@pytest.fixture(scope="module")
async def linking(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Linking]:
    tmp = tmp_path_factory.mktemp("roster")
    server = authed_nats(tmp / "nats")
    settings = linking_app.Settings(
        nats_url=server.url, database_url=f"sqlite+aiosqlite:///{tmp / 'linking.db'}", data_dir=tmp
    )
    await asyncio.to_thread(migrate, linking_app, settings)
    nc = await nats.connect(server.url)
    try:
        async with linking_app.build(settings).running():
            yield Linking(server.url, nc)
    finally:
        await nc.close()
        server.stop()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def roster_rows(trust: str, schools: list[str], classes: dict[str, str], pupils: int) -> list[str]:
    """Rows of `pupils` pupils per class; every class's school is `classes[class_id]`."""
    rows = []
    for class_id, school in classes.items():
        tz = "Europe/London" if school == schools[0] else "Europe/Dublin"
        for i in range(pupils):
            pupil = f"{class_id}-p{i}"
            rows.append(
                f"{trust},Oak Trust,{school},School {school},{tz},{class_id},Class {class_id},{pupil},Amy{i},Smith{i}"
            )
    return rows


async def test_import_applies_and_reimport_changes_nothing(linking: Linking, tmp_path: Path) -> None:
    trust, oak, elm = uid("trust"), uid("oak"), uid("elm")
    c1, c2, c3 = uid("robins"), uid("wrens"), uid("owls")
    rows = roster_rows(trust, [oak, elm], {c1: oak, c2: oak, c3: elm}, pupils=5)
    # A pupil in two classes takes two rows and is counted in both.
    rows.append(f"{trust},Oak Trust,{oak},School {oak},Europe/London,{c2},Class {c2},{c1}-p0,Amy0,Smith0")
    # Columns in another order, a BOM and Windows line ends, as spreadsheets save them.
    cols = HEADER.split(",")
    order = list(reversed(range(len(cols))))
    lines = [",".join(cols[i] for i in order)] + [",".join(r.split(",")[i] for i in order) for r in rows]
    csv_file = tmp_path / "roster.csv"
    csv_file.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())

    done = await portal("roster", "import", str(csv_file), nats_url=linking.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported 2 schools, 3 classes, 15 pupils (applied)"
    # No waiting here: the command returned only once linking had applied everything.
    expected = {
        c1: (f"Class {c1}", f"School {oak}", 5),
        c2: (f"Class {c2}", f"School {oak}", 6),
        c3: (f"Class {c3}", f"School {elm}", 5),
    }
    assert await linking.classes(oak, elm) == expected
    assert await linking.schools(oak, elm) == {
        oak: (trust, f"School {oak}", "Europe/London"),
        elm: (trust, f"School {elm}", "Europe/Dublin"),
    }

    again = await portal("roster", "import", str(csv_file), nats_url=linking.url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "imported 2 schools, 3 classes, 15 pupils (applied)"
    assert await linking.classes(oak, elm) == expected


async def test_malformed_file_reports_every_line_and_applies_nothing(linking: Linking, tmp_path: Path) -> None:
    trust, oak, bad = uid("trust"), uid("oak"), uid("bad")
    c1 = uid("robins")
    row = f"{trust},Oak Trust,{oak},Oak Primary,Europe/London,{c1},Robins"
    lines = [
        HEADER,
        f"{row},{c1}-p1,Amy,Smith",  # line 2
        f"{row},{c1}-p2,Ben,Jones",  # line 3
        f"{trust},Oak Trust,{bad},Bad School,Europe/Londn,{uid('c')},Wrens,{uid('p')},Cat,Lee",  # line 4: bad zone
        f"{row},{c1}-p3,Dan,Brown",  # line 5
        f"{row},{c1}-p4,,Green",  # line 6: missing first name
        f"{trust},Oak Trust,{oak},Oak Primary School,Europe/London,{c1},Robins,{c1}-p5,Eve,White",  # line 7
    ]
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    before = await linking.stream_messages()

    done = await portal("roster", "import", str(csv_file), nats_url=linking.url)
    assert done.returncode == 1
    problems = [line for line in done.stderr.splitlines() if line.startswith(f"{csv_file}:")]
    assert [p.split(":")[1] for p in problems] == ["4", "6", "7"], done.stderr
    assert "Europe/Londn" in problems[0] and "did you mean Europe/London" in problems[0]
    assert "first_name" in problems[1]
    assert "'Oak Primary School' here but 'Oak Primary' on line 2" in problems[2]
    assert "nothing was imported" in done.stderr
    assert await linking.stream_messages() == before
    assert await linking.schools(oak, bad) == {}
    assert await linking.classes(oak, bad) == {}


async def test_header_problems_are_clear(linking: Linking, tmp_path: Path) -> None:
    no_pupil_id = tmp_path / "no-pupil-id.csv"
    no_pupil_id.write_text(HEADER.replace(",pupil_id", "") + "\nt,T,s,S,Europe/London,c,C,Amy,Smith\n")
    done = await portal("roster", "import", str(no_pupil_id), nats_url=linking.url)
    assert done.returncode == 1
    assert f"{no_pupil_id}:1: missing column pupil_id" in done.stderr

    extra = tmp_path / "extra.csv"
    extra.write_text(HEADER + ",year\nt,T,s,S,Europe/London,c,C,p,Amy,Smith,3\n")
    done = await portal("roster", "import", str(extra), nats_url=linking.url)
    assert done.returncode == 1 and f"{extra}:1: unknown column 'year'" in done.stderr

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    done = await portal("roster", "import", str(empty), nats_url=linking.url)
    assert done.returncode == 1 and "the file is empty; its first line must be the header" in done.stderr

    headless = tmp_path / "headless.csv"
    headless.write_text("t,T,s,S,Europe/London,c,C,p,Amy,Smith\n")
    done = await portal("roster", "import", str(headless), nats_url=linking.url)
    assert done.returncode == 1 and f"{headless}:1: the first line must be the header" in done.stderr


async def test_no_nats_is_a_one_line_error(tmp_path: Path) -> None:
    csv_file = tmp_path / "roster.csv"
    csv_file.write_text(HEADER + "\nt,T,s,S,Europe/London,c,C,p,Amy,Smith\n")
    done = await portal("roster", "import", str(csv_file), nats_url=None, PORTAL_DATA_DIR=str(tmp_path / "var"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "PORTAL_NATS_URL" in done.stderr


async def test_timeout_when_linking_is_not_running_and_the_import_continues(fresh_nats, tmp_path: Path) -> None:
    school = uid("oak")
    csv_file = tmp_path / "roster.csv"
    csv_file.write_text(HEADER + f"\nt,T,{school},Oak,Europe/London,c-{school},Robins,p-{school},Amy,Smith\n")
    started = time.monotonic()
    done = await portal("roster", "import", "--timeout", "3", str(csv_file), nats_url=fresh_nats.url)
    assert done.returncode == 1
    assert time.monotonic() - started < 15
    assert "timed out after 3s" in done.stderr and "no linking service answers" in done.stderr
    assert "continues in the background" in done.stderr

    # It does: once linking runs, it applies what was published.
    settings = linking_app.Settings(
        nats_url=fresh_nats.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}",
        data_dir=tmp_path,
        linking_code_key=new_key(),
    )
    await asyncio.to_thread(migrate, linking_app, settings)
    nc = await nats.connect(fresh_nats.url)
    try:
        async with linking_app.build(settings).running():
            env = Linking(fresh_nats.url, nc)
            await eventually(lambda: env.classes(school), timeout=15, message="the roster applied")
            assert await env.classes(school) == {f"c-{school}": ("Robins", "Oak", 1)}
    finally:
        await nc.close()


async def test_import_staff_sends_each_new_member_a_set_password_email(fresh_nats, tmp_path: Path) -> None:
    settings = identity_app.Settings(nats_url=fresh_nats.url, data_dir=tmp_path, **CHEAP)
    await asyncio.to_thread(migrate, identity_app, settings)
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    await ensure_streams(js, [streams.NOTIFY_REQUESTS])
    csv_file = tmp_path / "staff.csv"
    csv_file.write_text(
        "\ufeffstaff_id,name,email,role,school_id,trust_id\n"
        "st-1,Tess Teacher,tess@oak.example,teacher,oak,\n"
        "st-2,Hal Head,hal@oak.example,school_admin,oak,oak-trust\n"
        "st-3,Tara Trust,tara@trust.example,trust_admin,,oak-trust\n"
    )

    async def set_password_emails() -> list[dict]:
        # Read without a consumer: NOTIFY_REQUESTS is a work queue, and notify is not running.
        state = (await js.stream_info(streams.NOTIFY_REQUESTS.name)).state
        found = []
        if state.messages == 0:
            return found  # an empty stream's first_seq is 0, which get_msg refuses
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg(streams.NOTIFY_REQUESTS.name, seq)
            if msg.subject == "notify.request.set_password.v1":
                found.append(json.loads(msg.data))
        return found

    try:
        async with identity_app.build(settings).running():
            done = await portal("roster", "import-staff", str(csv_file), nats_url=fresh_nats.url)
            assert done.returncode == 0, done.stderr
            assert (
                done.stdout.strip() == "published 3 staff; identity emails each new member a link to set their password"
            )

            emails = await eventually(
                lambda: _at_least(set_password_emails(), 3), timeout=20, message="three set-password emails"
            )
            assert sorted(e["to"] for e in emails) == ["hal@oak.example", "tara@trust.example", "tess@oak.example"]
            assert all("/reset-password?token=" in e["reset_url"] for e in emails)

            # Importing again creates no one, so no new email goes out.
            again = await portal("roster", "import-staff", str(csv_file), nats_url=fresh_nats.url)
            assert again.returncode == 0, again.stderr
            await asyncio.sleep(1.0)
            assert len(await set_password_emails()) == 3
    finally:
        await nc.close()


async def _at_least(found, n: int) -> list[dict] | None:
    items = await found
    return items if len(items) >= n else None


async def test_malformed_staff_file_reports_every_line(fresh_nats, tmp_path: Path) -> None:
    csv_file = tmp_path / "staff.csv"
    csv_file.write_text(
        "school_id,trust_id,staff_id,email,name,role\n"
        "oak,,st-1,tess@oak.example,Tess,teacher\n"
        "oak,t,st-2,tara@trust.example,Tara,trust_admin\n"  # line 3: a trust admin with a school
        ",,st-3,tom@oak.example,Tom,teacher\n"  # line 4: no school
        "oak,,st-4,not-an-address,Nat,teacher\n"  # line 5
        "oak,,st-5,jan@oak.example,Jan,janitor\n"  # line 6
        "oak,,st-6,TESS@oak.example,Tessa,teacher\n"  # line 7: someone else's address
    )
    done = await portal("roster", "import-staff", str(csv_file), nats_url=fresh_nats.url)
    assert done.returncode == 1
    problems = [line for line in done.stderr.splitlines() if line.startswith(f"{csv_file}:")]
    assert [p.split(":")[1] for p in problems] == ["3", "4", "5", "6", "7"], done.stderr
    assert "leave school_id empty" in problems[0] and "school_id" in problems[1]
    assert "not an email address" in problems[2] and "janitor" in problems[3] and "st-1" in problems[4]
    nc = await nats.connect(fresh_nats.url)
    try:
        with pytest.raises(nats.js.errors.NotFoundError):
            await nc.jetstream().stream_info(streams.PLATFORM.name)  # nothing published: not even the stream exists
    finally:
        await nc.close()


async def test_contact_columns_carry_the_schools_contacts_to_linking(linking: Linking, tmp_path: Path) -> None:
    trust, oak, c1, c2 = uid("trust"), uid("oak"), uid("robins"), uid("maths")
    head = HEADER + ",contact_email_1,contact_relationship_1,contact_email_2,contact_relationship_2"
    row = f"{trust},Oak Trust,{oak},Oak Primary,Europe/London"
    lines = [
        head,
        f"{row},{c1},Robins,{c1}-p1,Amy,Smith,mum.{oak}@example.org,Mother,dad.{oak}@example.org,Father",
        # The same pupil in a set: the contacts given once are enough.
        f"{row},{c2},Maths,{c1}-p1,Amy,Smith,,,,",
        f"{row},{c1},Robins,{c1}-p2,Ben,Jones,gran.{oak}@example.org,Grandparent,,",
        f"{row},{c1},Robins,{c1}-p3,Cat,Lee,,,,",
    ]
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    done = await portal("roster", "import", str(csv_file), nats_url=linking.url)
    assert done.returncode == 0, done.stderr

    scope = contract.StaffScope(school_ids=[oak])
    reply = await call(
        linking.nc, contract.BULK_INVITE, contract.BulkInviteRequest(scope=scope, class_id=c1, from_contacts=True)
    )
    assert (reply.sent, reply.skipped) == (3, [])

    bad = tmp_path / "bad-contacts.csv"
    bad.write_text(
        "\n".join(
            [
                head,
                f"{row},{c1},Robins,{c1}-p4,Dan,Brown,not-an-address,Mother,,",  # line 2
                f"{row},{c1},Robins,{c1}-p5,Eve,White,,Father,,",  # line 3: a relationship without an address
                f"{row},{c1},Robins,{c1}-p1,Amy,Smith,other.{oak}@example.org,Aunt,,",  # line 4: other contacts
                f"{row},{c2},Maths,{c1}-p1,Amy,Smith,mum.{oak}@example.org,Mother,,",  # line 5
            ]
        )
        + "\n"
    )
    before = await linking.stream_messages()
    done = await portal("roster", "import", str(bad), nats_url=linking.url)
    assert done.returncode == 1
    problems = [line for line in done.stderr.splitlines() if line.startswith(f"{bad}:")]
    assert [p.split(":")[1] for p in problems] == ["2", "3", "5"], done.stderr
    assert "contact_email_1 'not-an-address' is not an email address" in problems[0]
    assert "other contacts here than on line 4" in problems[2]
    assert await linking.stream_messages() == before


async def test_full_import_ends_missing_pupils_and_classes_and_refuses_half_a_school(
    linking: Linking, tmp_path: Path
) -> None:
    trust, oak, elm = uid("trust"), uid("oak"), uid("elm")
    c1, c2, e1 = uid("robins"), uid("wrens"), uid("elm1")
    first = tmp_path / "first.csv"
    first.write_text("\n".join([HEADER, *roster_rows(trust, [oak, elm], {c1: oak, c2: oak, e1: elm}, pupils=2)]) + "\n")
    assert (await portal("roster", "import", str(first), nats_url=linking.url)).returncode == 0
    assert {k: v[2] for k, v in (await linking.classes(oak, elm)).items()} == {c1: 2, c2: 2, e1: 2}

    # Oak's whole roster now: Wrens is gone and one Robin left; Elm is not in the file and keeps everything.
    whole = tmp_path / "whole.csv"
    whole.write_text("\n".join([HEADER, *roster_rows(trust, [oak], {c1: oak}, pupils=1)]) + "\n")
    before = await linking.stream_messages()
    refused = await portal("roster", "import", "--full", str(whole), nats_url=linking.url)
    assert refused.returncode == 1
    assert f"the file would remove 3 of the 4 pupils of school {oak} (more than half)" in refused.stderr
    assert "Nothing was changed" in refused.stderr and "--yes" in refused.stderr
    assert await linking.stream_messages() == before
    assert {k: v[2] for k, v in (await linking.classes(oak, elm)).items()} == {c1: 2, c2: 2, e1: 2}

    done = await portal("roster", "import", "--full", "--yes", str(whole), nats_url=linking.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported 1 school, 1 class, 1 pupil (applied); 3 pupils left, 1 class removed"
    assert {k: v[2] for k, v in (await linking.classes(oak, elm)).items()} == {c1: 1, e1: 2}

    # The same file again: nothing more leaves, and no more than half is no question.
    again = await portal("roster", "import", "--full", str(whole), nats_url=linking.url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("; 0 pupils left, 0 classes removed")
