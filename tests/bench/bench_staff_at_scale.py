"""How long a trust's staff wait for the two big requests of running it at scale:

1. `POST /api/v1/classes/{class_id}/invitations` with 1,000 rows (the most one request takes),
   end to end through a gateway, linking and identity over NATS: 500 pupils, two addresses each,
   every row sent. Three requests, each with new addresses.
2. `portal roster import` of a trust's file (20 schools, 400 classes, 10,000 pupils with a
   parent contact each) as an operator runs it, as a process, until linking has applied it:
   the first import, the same file again with `--full` (nothing changes), and a year's turnover
   with `--full --yes` (500 pupils left, 500 joined).

    .venv/bin/python tests/bench/bench_staff_at_scale.py

SQLite databases in a temporary directory. Prints the time of each. Not a test: nothing fails
on slow figures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

import natsauth  # noqa: E402

# The services and `portal` sign in to the NATS servers started here with these seeds.
os.environ["PORTAL_NATS_CREDS_DIR"] = str(natsauth.CREDS_DIR)
from gateway_portal import running_portal, uid  # noqa: E402
from helpers import eventually  # noqa: E402

from contracts import linking as contract  # noqa: E402
from contracts import platform  # noqa: E402
from contracts.kit.logs import configure_logging  # noqa: E402
from contracts.kit.rpc import call  # noqa: E402

PORTAL = str(Path(sys.executable).with_name("portal"))
BULK_PUPILS, PER_PUPIL, BULK_RUNS = 500, 2, 3
SCHOOLS, CLASSES_PER_SCHOOL, PUPILS_PER_CLASS = 20, 20, 25
HEADER = (
    "trust_id,trust_name,school_id,school_name,timezone,class_id,class_name,pupil_id,first_name,last_name,"
    "contact_email_1,contact_relationship_1"
)


def line(label: str, seconds: float, extra: str = "") -> None:
    print(f"{label:<64} {seconds * 1000:8.0f} ms {extra}")


async def bulk_invitations() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_portal(Path(tmp)) as portal:
            r = portal.roster
            class_id = uid("big")
            pupils = [uid("pupil") for _ in range(BULK_PUPILS)]
            events = [
                (platform.CLASS_UPSERTED, platform.ClassUpserted(school_id=r.school_a, class_id=class_id, name="Big")),
                *(
                    (
                        platform.PUPIL_UPSERTED,
                        platform.PupilUpserted(
                            school_id=r.school_a,
                            pupil_id=p,
                            first_name="Amy",
                            last_name=f"Smith{n}",
                            class_ids=[class_id],
                        ),
                    )
                    for n, p in enumerate(pupils)
                ),
            ]
            js = portal.nc.jetstream()
            for subject, event in events:
                await js.publish(subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.event_id})

            async def applied() -> bool:
                status = await call(
                    portal.nc,
                    contract.ROSTER_STATUS,
                    contract.RosterStatusRequest(event_ids=[e.event_id for _, e in events]),
                    timeout=10,
                )
                return not status.missing

            await eventually(applied, timeout=120, message="roster applied")
            for run in range(BULK_RUNS):
                rows = [
                    {"pupil_id": p, "email": f"carer{run}.{k}.{p}@example.org"}
                    for p in pupils
                    for k in range(PER_PUPIL)
                ]
                t = time.perf_counter()
                done = await portal.post("admin_a", f"/classes/{class_id}/invitations", json={"invitations": rows})
                took = time.perf_counter() - t
                assert done.status_code == 201, done.text
                body = done.json()
                assert body["sent"] == len(rows), body["skipped"][:3]
                line(
                    f"POST /classes/{{id}}/invitations, {len(rows)} rows (run {run + 1})", took, f"sent {body['sent']}"
                )


def roster_file(path: Path, *, skip: int = 0, extra: int = 0) -> None:
    """The trust's file; without the last `skip` pupils of each school, with `extra` new ones."""
    rows = [HEADER]
    per_school = CLASSES_PER_SCHOOL * PUPILS_PER_CLASS
    for s in range(SCHOOLS):
        school = f"s{s}"
        kept = per_school - skip
        for n in range(kept + extra):
            c = (n // PUPILS_PER_CLASS) % CLASSES_PER_SCHOOL
            pupil = f"{school}-p{n}" if n < kept else f"{school}-new{n}"
            rows.append(
                f"t1,Oak Trust,{school},School {s},Europe/London,{school}-c{c},Class {c},{pupil},Amy{n},Smith{n},"
                f"carer.{pupil}@example.org,mother"
            )
    path.write_text("\n".join(rows) + "\n")


async def roster_import() -> None:
    from contracts.kit.service import migrate
    from linking import app as linking_app

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = natsauth.authed_nats(tmp / "nats")
        try:
            settings = linking_app.Settings(
                nats_url=server.url, database_url=f"sqlite+aiosqlite:///{tmp / 'linking.db'}", data_dir=tmp
            )
            await asyncio.to_thread(migrate, linking_app, settings)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
            env |= {"PORTAL_NATS_URL": server.url, "PORTAL_NATS_CREDS_DIR": str(natsauth.CREDS_DIR)}
            whole, turnover = tmp / "trust.csv", tmp / "turnover.csv"
            roster_file(whole)
            per_school = CLASSES_PER_SCHOOL * PUPILS_PER_CLASS
            roster_file(turnover, skip=per_school // 20, extra=per_school // 20)

            async def run(label: str, *args: str) -> None:
                cmd = [PORTAL, "roster", "import", "--timeout", "600", *args]
                t = time.perf_counter()
                done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, env=env)
                took = time.perf_counter() - t
                assert done.returncode == 0, done.stderr
                line(label, took, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "")

            async with linking_app.build(settings).running():
                await run("portal roster import, 10,000 pupils (first time)", str(whole))
                await run("portal roster import --full, the same file", "--full", str(whole))
                await run(
                    "portal roster import --full --yes, 500 left and 500 joined", "--full", "--yes", str(turnover)
                )
        finally:
            server.stop()


async def main() -> None:
    print(f"Python {sys.version.split()[0]}")
    await bulk_invitations()
    await roster_import()


if __name__ == "__main__":
    configure_logging(service="bench", level="WARNING", fmt="console")
    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(natsauth.CREDS_DIR, ignore_errors=True)
