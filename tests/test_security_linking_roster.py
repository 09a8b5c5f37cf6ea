"""Poisoned names in roster files: `portal roster import` and `import-staff`, run as real
processes against a real NATS with the real linking service, refuse a file naming a person with
a line break, a tab, a bidi override, a zero-width character or more than 100 characters. Each
such line is reported and nothing of the file is applied.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from natsauth import authed_nats

from contracts import linking as contract
from contracts import streams
from contracts.kit.rpc import call
from contracts.kit.service import migrate
from linking import app as linking_app
from portal.natsserver import NatsServer

pytestmark = pytest.mark.asyncio

PORTAL = str(Path(sys.executable).with_name("portal"))
ROSTER_HEADER = [
    "trust_id", "trust_name", "school_id", "school_name", "timezone",
    "class_id", "class_name", "pupil_id", "first_name", "last_name",
]  # fmt: skip
STAFF_HEADER = ["school_id", "trust_id", "staff_id", "email", "name", "role"]
INVISIBLE = "cannot contain line breaks, tabs or invisible formatting characters"


class Env:
    def __init__(self, server: NatsServer, nc: nats.NATS) -> None:
        self.server, self.nc = server, nc

    async def platform_messages(self) -> int:
        try:
            return (await self.nc.jetstream().stream_info(streams.PLATFORM.name)).state.messages
        except nats.js.errors.NotFoundError:
            return 0

    async def pupils(self, school_id: str) -> dict[str, tuple[str, str]]:
        """pupil_id -> (first, last) in every class of the school, as its staff see them."""
        scope = contract.StaffScope(school_ids=[school_id])
        classes = await call(self.nc, contract.CLASSES, contract.ClassesRequest(scope=scope), timeout=5)
        found = {}
        for c in classes.classes:
            reply = await call(
                self.nc,
                contract.CLASS_PUPILS,
                contract.ClassPupilsRequest(scope=scope, class_id=c.class_id),
                timeout=5,
            )
            found.update({p.pupil_id: (p.first_name, p.last_name) for p in reply.pupils})
        return found


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("poisoned-roster")
    server = authed_nats(tmp / "nats")
    settings = linking_app.Settings(
        nats_url=server.url, database_url=f"sqlite+aiosqlite:///{tmp / 'linking.db'}", data_dir=tmp
    )
    await asyncio.to_thread(migrate, linking_app, settings)
    nc = await nats.connect(server.url)
    try:
        async with linking_app.build(settings).running():
            yield Env(server, nc)
    finally:
        await nc.close()
        server.stop()


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """As a spreadsheet saves it: a cell holding a line break is quoted and spans two lines."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


async def portal(env: Env, *args: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PORTAL_NATS_URL": env.server.url}
    return await asyncio.to_thread(
        subprocess.run, [PORTAL, *args], capture_output=True, text=True, env=full, timeout=120
    )


def reported(done: subprocess.CompletedProcess, path: Path) -> dict[int, str]:
    """The problems the command reported, by line."""
    found: dict[int, str] = {}
    for line in done.stderr.splitlines():
        if line.startswith(f"{path}:"):
            number, message = line[len(f"{path}:") :].split(": ", 1)
            found[int(number)] = message
    return found


async def test_a_roster_file_with_a_poisoned_pupil_name_is_refused_whole(env: Env, tmp_path: Path) -> None:
    school, klass = f"oak-{uuid.uuid4().hex[:8]}", f"robins-{uuid.uuid4().hex[:8]}"
    at_school = ["t1", "Oak Trust", school, "Oak Primary", "Europe/London", klass, "Robins"]
    rows = [
        [*at_school, f"{klass}-1", "Amy", "Adams"],  # line 2: fine
        [*at_school, f"{klass}-2", "Ben\u202eecila", "Brown"],  # line 3: a bidi override
        [*at_school, f"{klass}-3", "Cara", "Clark\nHead Teacher"],  # line 4: a line break in a quoted cell
        [*at_school, f"{klass}-4", "Dan\u200b", "Dale"],  # line 5: a zero-width space
        [*at_school, f"{klass}-5", "Eve", "E" * 101],  # line 6: too long
        [*at_school, f"{klass}-6", "  Zoë  ", "Ôgúndélé-Łukasz"],  # line 7: fine (trimmed, any script)
    ]
    path = write_csv(tmp_path / "roster.csv", ROSTER_HEADER, rows)
    before = await env.platform_messages()

    done = await portal(env, "roster", "import", str(path))
    assert done.returncode == 1, done.stdout
    problems = reported(done, path)
    assert sorted(problems) == [3, 4, 5, 6], done.stderr
    assert problems[3].startswith("first_name: ") and INVISIBLE in problems[3] and "U+202E" in problems[3]
    assert problems[4].startswith("last_name: ") and "LINE BREAK" in problems[4]
    assert problems[5].startswith("first_name: ") and "U+200B" in problems[5]
    assert problems[6].startswith("last_name: ") and "at most 100 characters" in problems[6]
    assert "nothing was imported" in done.stderr

    # Nothing of the file, not even its good lines, reached the portal.
    assert await env.platform_messages() == before
    assert await env.pupils(school) == {}

    # Without the poisoned lines the file imports, names trimmed and kept as written.
    path = write_csv(tmp_path / "fixed.csv", ROSTER_HEADER, [rows[0], rows[5]])
    done = await portal(env, "roster", "import", str(path))
    assert done.returncode == 0, done.stderr
    assert await env.pupils(school) == {f"{klass}-1": ("Amy", "Adams"), f"{klass}-6": ("Zoë", "Ôgúndélé-Łukasz")}


async def test_a_staff_file_with_a_poisoned_name_is_refused_whole(env: Env, tmp_path: Path) -> None:
    rows = [
        ["oak", "", "st-1", "tess@oak.example", "Tess Teacher", "teacher"],  # line 2: fine
        ["oak", "", "st-2", "hal@oak.example", "Hal\tHead", "school_admin"],  # line 3: a tab
        ["oak", "", "st-3", "ivy@oak.example", "Ivy\u2067Admin\u2069", "teacher"],  # line 4: bidi isolates
        ["oak", "", "st-4", "jo@oak.example", "J" * 101, "teacher"],  # line 5: too long
        ["oak", "", "st-5", "kim@oak.example", "Kim\r\nSupport", "teacher"],  # line 6: a line break
    ]
    path = write_csv(tmp_path / "staff.csv", STAFF_HEADER, rows)
    before = await env.platform_messages()

    done = await portal(env, "roster", "import-staff", str(path))
    assert done.returncode == 1, done.stdout
    problems = reported(done, path)
    assert sorted(problems) == [3, 4, 5, 6], done.stderr
    assert all(p.startswith("name: ") for p in problems.values())
    assert "TAB" in problems[3] and "U+2067" in problems[4] and "at most 100" in problems[5]
    assert "LINE BREAK" in problems[6]
    assert "nothing was imported" in done.stderr
    assert await env.platform_messages() == before
