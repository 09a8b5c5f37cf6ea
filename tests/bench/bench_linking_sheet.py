"""How long a class sheet of 30 pupils takes (issue 6: 100 ms or less on the development machine).

    .venv/bin/python tests/bench/bench_linking_sheet.py

Measures the rendering alone (cold: nothing cached but the masks stored with the codes; warm:
renderings cached), then the whole request over NATS against a SQLite database, as the gateway
will ask it. Prints median and worst of each.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats

from contracts import linking as contract
from contracts import platform
from contracts.kit.logs import configure_logging
from contracts.kit.rpc import call
from contracts.kit.service import migrate
from linking import app as linking_app
from linking import codes, sheet
from linking.qr import QrCache, best_mask
from portal.natsserver import start_nats

PUPILS = 30
RUNS = 20


def report(label: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(f"{label:<48} median {statistics.median(ms):6.1f} ms   worst {ms[-1]:6.1f} ms")


def render_only() -> None:
    public = "http://127.0.0.1:8000"
    made = [codes.generate() for _ in range(PUPILS)]
    masks = [best_mask(f"{public}/link/{codes.display(c)}") for c in made]
    expires = datetime.now(UTC) + timedelta(days=30)

    def cards(cache: QrCache) -> list[sheet.Card]:
        out = []
        for i, (c, mask) in enumerate(zip(made, masks, strict=True)):
            url = f"{public}/link/{codes.display(c)}"
            out.append(
                sheet.Card(
                    f"Pupil{i:02d} Surname",
                    "Year 3 Robins",
                    "Oak Primary",
                    codes.display(c),
                    url,
                    sheet.expiry_date(expires, "Europe/London"),
                    cache.get(url, mask),
                )
            )
        return out

    for fmt, render in (("html", sheet.render_html), ("pdf", sheet.render_pdf)):
        cold, warm = [], []
        cache = QrCache()
        for _ in range(RUNS):
            cache.clear()
            t = time.perf_counter()
            render(cards(cache), class_name="Year 3 Robins", school_name="Oak Primary", host="127.0.0.1:8000")
            cold.append(time.perf_counter() - t)
        for _ in range(RUNS):
            t = time.perf_counter()
            render(cards(cache), class_name="Year 3 Robins", school_name="Oak Primary", host="127.0.0.1:8000")
            warm.append(time.perf_counter() - t)
        report(f"render {fmt}, 30 cards, cold cache", cold)
        report(f"render {fmt}, 30 cards, warm cache", warm)


async def over_nats() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_nats(Path(tmp) / "nats")
        settings = linking_app.Settings(
            nats_url=server.url,
            database_url=f"sqlite+aiosqlite:///{tmp}/l.db",
            data_dir=Path(tmp),
            log_level="WARNING",
            linking_code_key=codes.new_key(),
        )
        await asyncio.to_thread(migrate, linking_app, settings)
        runtime = linking_app.build(settings)
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        try:
            async with runtime.running():
                events = [
                    (
                        platform.SCHOOL_UPSERTED,
                        platform.SchoolUpserted(
                            trust_id="t", school_id="s", name="Oak Primary", timezone="Europe/London"
                        ),
                    ),
                    (
                        platform.CLASS_UPSERTED,
                        platform.ClassUpserted(school_id="s", class_id="c", name="Year 3 Robins"),
                    ),
                ] + [
                    (
                        platform.PUPIL_UPSERTED,
                        platform.PupilUpserted(
                            school_id="s",
                            pupil_id=f"p{i}",
                            first_name=f"Pupil{i:02d}",
                            last_name="Surname",
                            class_ids=["c"],
                        ),
                    )
                    for i in range(PUPILS)
                ]
                for subject, ev in events:
                    await js.publish(subject, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id})
                ids = [ev.event_id for _, ev in events]
                while (await call(nc, contract.ROSTER_STATUS, contract.RosterStatusRequest(event_ids=ids))).missing:
                    await asyncio.sleep(0.05)
                scope = contract.StaffScope(school_ids=["s"])
                t = time.perf_counter()
                await call(
                    nc, contract.CREATE_CODES, contract.CreateCodesRequest(scope=scope, class_id="c"), timeout=10
                )
                report("create codes for 30 (one-off: picks 30 masks)", [time.perf_counter() - t])
                for fmt in ("html", "pdf"):
                    cold, warm = [], []
                    for _ in range(RUNS):
                        runtime.linking.printed.qr_cache.clear()
                        t = time.perf_counter()
                        await call(
                            nc, contract.CLASS_SHEET, contract.ClassSheetRequest(scope=scope, class_id="c", format=fmt)
                        )
                        cold.append(time.perf_counter() - t)
                    for _ in range(RUNS):
                        t = time.perf_counter()
                        await call(
                            nc, contract.CLASS_SHEET, contract.ClassSheetRequest(scope=scope, class_id="c", format=fmt)
                        )
                        warm.append(time.perf_counter() - t)
                    report(f"rpc class_sheet {fmt} over NATS + SQLite, cold", cold)
                    report(f"rpc class_sheet {fmt} over NATS + SQLite, warm", warm)
        finally:
            await nc.close()
            server.stop()


if __name__ == "__main__":
    configure_logging(service="bench", level="WARNING", fmt="console")
    print(f"Python {sys.version.split()[0]}, {PUPILS} pupils, {RUNS} runs each")
    render_only()
    asyncio.run(over_nats())
