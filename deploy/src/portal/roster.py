"""`portal roster import` and `portal roster import-staff`: a roster CSV file into platform events.

The whole file is checked before anything is published, so a malformed file changes nothing.
Then each school, class, pupil (or member of staff) becomes one `platform.roster.*` event with a
fresh id, exactly as the learning platform would publish it; the consumers' upserts make a
second import of the same file change nothing. `import` then waits until linking reports every
event applied, so that commands run after it see the roster.
"""

from __future__ import annotations

import asyncio
import csv
import difflib
import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import typer

ROSTER_COLUMNS = (
    "trust_id", "trust_name", "school_id", "school_name", "timezone",
    "class_id", "class_name", "pupil_id", "first_name", "last_name",
)  # fmt: skip
# Optional: the school's records of who cares for each pupil (invited with "from contacts").
CONTACT_COLUMNS = ("contact_email_1", "contact_relationship_1", "contact_email_2", "contact_relationship_2")
STAFF_COLUMNS = ("school_id", "trust_id", "staff_id", "email", "name", "role")
ROSTER_HELP = "Columns: " + ", ".join(ROSTER_COLUMNS) + "; optionally " + ", ".join(CONTACT_COLUMNS) + "."
STAFF_HELP = "Columns: " + ", ".join(STAFF_COLUMNS) + "."
STAFF_ROLES = ("teacher", "school_admin", "trust_admin")

MAX_PROBLEMS = 50
MAX_ID = 128  # the longest id the portal's requests accept (class ids in URLs, scopes)
MAX_NAME = 200  # a school's, trust's or class's name
# A person's name (a pupil's first and last name, a member of staff's) follows the portal's one
# rule for names (contracts.names), checked here so that a file breaking it is refused whole.
PERSON_NAMES = ("first_name", "last_name", "name")
MAX_EMAIL = 254
MAX_RELATIONSHIP = 100
STATUS_CHUNK = 5000  # ROSTER_STATUS takes at most this many ids a request
PUBLISH_CONCURRENCY = 64
PUBLISH_ATTEMPTS = 8
PROGRESS_EVERY = 2.0

roster_app = typer.Typer(
    help="Load schools, classes, pupils and staff from CSV files (the columns are in deploy/README.md).",
    no_args_is_help=True,
)


class RosterFileError(Exception):
    """The file cannot be imported; `problems` are `FILE:LINE: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Row:
    """One data row: its line as a spreadsheet numbers it (header = 1) and its trimmed cells."""

    line: int
    cells: dict[str, str]


@dataclass
class Problems:
    """Problems found in one file, each as `FILE:LINE: message`."""

    path: str
    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int | None, message: str) -> None:
        where = f"{self.path}:{line}" if line is not None else self.path
        self.items.append((line or 0, f"{where}: {message}"))

    def raise_if_any(self) -> None:
        if self.items:
            raise RosterFileError([text for _, text in sorted(self.items, key=lambda item: item[0])])


# -- reading and checking -------------------------------------------------------------------


def read_rows(path: Path, columns: Sequence[str], problems: Problems, optional: Sequence[str] = ()) -> list[Row]:
    """The data rows under a header naming exactly `columns` (and any of `optional`); bad rows go
    to `problems`, a bad file raises."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.add(None, f"cannot read the file ({exc.strerror or exc})")
        problems.raise_if_any()
    try:
        text = data.decode("utf-8-sig")  # spreadsheets often start UTF-8 files with a BOM
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.add(line, 'not UTF-8 text: save the file as "CSV UTF-8"')
        problems.raise_if_any()
    expected = ", ".join(columns)
    if not text.strip():
        problems.add(None, f"the file is empty; its first line must be the header: {expected}")
        problems.raise_if_any()

    records = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip().lower() for h in next(records)]
    except csv.Error as exc:
        problems.add(1, f"not a CSV header ({exc})")
        problems.raise_if_any()
    _check_header(header, columns, problems, optional)
    problems.raise_if_any()

    rows: list[Row] = []
    line = 1
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.add(line + 1, f"not valid CSV ({exc})")
            break
        line += 1
        if not any(cell.strip() for cell in record):
            continue  # blank lines, and the ",,,," rows spreadsheets leave at the end
        if len(record) > len(header) and any(cell.strip() for cell in record[len(header) :]):
            problems.add(line, f"{len(record)} cells, but the header names {len(header)} columns")
            continue
        cells = {name: (record[i].strip() if i < len(record) else "") for i, name in enumerate(header)}
        rows.append(Row(line, cells))
    if not rows and not problems.items:
        problems.add(None, "no rows under the header: nothing to import")
        problems.raise_if_any()
    return rows


def _check_header(header: list[str], columns: Sequence[str], problems: Problems, optional: Sequence[str] = ()) -> None:
    expected = ", ".join(columns)
    if len(header) == 1 and ";" in header[0]:
        problems.add(
            1, f"columns are separated by ';': save the file with commas (CSV); the header must be: {expected}"
        )
        return
    if not set(header) & set(columns):
        problems.add(1, f"the first line must be the header: {expected}")
        return
    seen: set[str] = set()
    for name in header:
        if not name:
            problems.add(1, "a column without a name in the header")
        elif name in seen:
            problems.add(1, f"column {name} appears twice in the header")
        elif name not in columns and name not in optional:
            also = f"; optionally {', '.join(optional)}" if optional else ""
            problems.add(1, f"unknown column {name!r} (the columns are: {expected}{also})")
        seen.add(name)
    missing = [c for c in columns if c not in seen]
    if missing:
        problems.add(
            1, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} (the columns are: {expected})"
        )


def _check_cells(row: Row, required: Iterable[str], problems: Problems) -> set[str]:
    """Report empty, too long or multi-line cells and bad names; returns the columns whose cell is usable."""
    empty = [c for c in required if not row.cells.get(c)]
    if empty:
        problems.add(row.line, f"empty cell{'s' if len(empty) > 1 else ''}: {', '.join(empty)}")
    good = set()
    for name, value in row.cells.items():
        if not value:
            continue
        if name in PERSON_NAMES:
            if why := _name_problem(value):
                problems.add(row.line, f"{name}: {why}")
            else:
                good.add(name)
            continue
        limit = (
            MAX_EMAIL if name.startswith(("email", "contact_email")) else MAX_ID if name.endswith("_id") else MAX_NAME
        )
        if name.startswith("contact_relationship"):
            limit = MAX_RELATIONSHIP
        if len(value) > limit:
            problems.add(row.line, f"{name} is {len(value)} characters long (at most {limit})")
        elif any(ch in value for ch in "\r\n\t\x00"):
            problems.add(row.line, f"{name} contains a line break or tab")
        else:
            good.add(name)
    return good


def _name_problem(value: str) -> str | None:
    """Why `value` is not a person's name, naming the first invisible character (which no
    spreadsheet shows), or None when it is one."""
    import unicodedata

    from contracts.names import MAX_LENGTH, problem_with_name

    why = problem_with_name(value)
    if why is None:
        return None
    name = value.strip()
    hidden = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf")), None)
    if hidden is not None:
        label = {"\n": "LINE BREAK", "\r": "LINE BREAK", "\t": "TAB"}.get(hidden) or unicodedata.name(hidden, "CONTROL")
        return f"{why.rstrip('.')} (U+{ord(hidden):04X} {label} at character {name.index(hidden) + 1})"
    if len(name) > MAX_LENGTH:
        return f"{why.rstrip('.')} (this one has {len(name)})"
    return why


@cache
def _zones() -> dict[str, str]:
    import zoneinfo

    return {z.lower(): z for z in zoneinfo.available_timezones()}


def _zone_problem(value: str) -> str | None:
    """Why `value` is not an IANA time zone name, or None when it is one."""
    zones = _zones()
    if value in zones.values():
        return None
    hint = zones.get(value.lower()) or next(iter(difflib.get_close_matches(value, zones.values(), n=1)), None)
    suggestion = f" (did you mean {hint}?)" if hint else " (e.g. Europe/London)"
    return f"timezone {value!r} is not an IANA time zone{suggestion}"


class Consistency:
    """Checks that every row naming an id agrees with the first row that named it."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.first: dict[tuple[str, str], tuple[int, dict[str, str]]] = {}

    def check(self, kind: str, key: str, row: Row, attrs: dict[str, str]) -> bool:
        """Record or compare `attrs` of `kind` `key`; False (reported) when they differ."""
        seen = self.first.get((kind, key))
        if seen is None:
            self.first[(kind, key)] = (row.line, attrs)
            return True
        line, before = seen
        ok = True
        for name, value in attrs.items():
            if before[name] != value:
                self.problems.add(
                    row.line, f"{kind} {key} has {name} {value!r} here but {before[name]!r} on line {line}"
                )
                ok = False
        return ok


def parse_roster(path: Path, shown: str | None = None) -> RosterPlan:
    """Read and check a roster file; raises `RosterFileError` listing every problem."""
    problems = Problems(shown or str(path))
    rows = read_rows(path, ROSTER_COLUMNS, problems, CONTACT_COLUMNS)
    same = Consistency(problems)
    plan = RosterPlan(contacts_given=bool(rows) and any(c in rows[0].cells for c in CONTACT_COLUMNS))
    contacts_from: dict[str, int] = {}
    for row in rows:
        good = _check_cells(row, ROSTER_COLUMNS, problems)
        c = row.cells
        if "timezone" in good and (why := _zone_problem(c["timezone"])):
            problems.add(row.line, why)
            good.discard("timezone")
        # An entity is compared (and remembered) only when all of its cells are usable, so that
        # one bad cell is reported once rather than again on every later row of that school.
        if {"trust_id", "trust_name"} <= good:
            same.check("trust", c["trust_id"], row, {"trust_name": c["trust_name"]})
        if {"school_id", "school_name", "timezone", "trust_id"} <= good:
            attrs = {"school_name": c["school_name"], "timezone": c["timezone"], "trust_id": c["trust_id"]}
            if same.check("school", c["school_id"], row, attrs):
                plan.schools.setdefault(c["school_id"], c)
        if {"class_id", "class_name", "school_id"} <= good and same.check(
            "class", c["class_id"], row, {"school_id": c["school_id"], "class_name": c["class_name"]}
        ):
            plan.classes.setdefault(c["class_id"], c)
        if {"pupil_id", "first_name", "last_name", "school_id"} <= good:
            attrs = {"school_id": c["school_id"], "first_name": c["first_name"], "last_name": c["last_name"]}
            if same.check("pupil", c["pupil_id"], row, attrs):
                plan.pupils.setdefault(c["pupil_id"], c)
                if "class_id" in good:
                    classes = plan.pupil_classes.setdefault(c["pupil_id"], [])
                    if c["class_id"] not in classes:
                        classes.append(c["class_id"])
                if plan.contacts_given:
                    _pupil_contacts(plan, contacts_from, row, good, problems)
    problems.raise_if_any()
    return plan


def _pupil_contacts(plan: RosterPlan, first: dict[str, int], row: Row, good: set[str], problems: Problems) -> None:
    """The pupil's contacts from this row; a pupil on several rows (one per class) gives them
    once, or the same on every row that gives any."""
    c = row.cells
    contacts: list[tuple[str, str]] = []
    for n in (1, 2):
        email, relationship = c.get(f"contact_email_{n}", ""), c.get(f"contact_relationship_{n}", "")
        if not email:
            if relationship:
                problems.add(row.line, f"contact_relationship_{n} without contact_email_{n}")
            continue
        if f"contact_email_{n}" not in good:
            continue
        if not _plausible_email(email):
            problems.add(row.line, f"contact_email_{n} {email!r} is not an email address")
            continue
        if relationship and len(relationship) > MAX_RELATIONSHIP:
            continue  # reported by _check_cells
        contacts.append((email, relationship))
    pid = c["pupil_id"]
    if not contacts:
        plan.contacts.setdefault(pid, [])
        return
    if pid in first and plan.contacts.get(pid) and plan.contacts[pid] != contacts:
        problems.add(row.line, f"pupil {pid} has other contacts here than on line {first[pid]}")
        return
    if not plan.contacts.get(pid):
        plan.contacts[pid] = contacts
        first[pid] = row.line


def parse_staff(path: Path, shown: str | None = None) -> list[dict[str, str]]:
    """Read and check a staff file; raises `RosterFileError` listing every problem."""
    problems = Problems(shown or str(path))
    rows = read_rows(path, STAFF_COLUMNS, problems)
    same = Consistency(problems)
    staff: dict[str, dict[str, str]] = {}
    emails: dict[str, tuple[str, int]] = {}
    for row in rows:
        c = row.cells
        role = c["role"].lower()
        scope = "trust_id" if role == "trust_admin" else "school_id"
        good = _check_cells(row, ("staff_id", "email", "name", "role", scope), problems)
        if "role" in good and role not in STAFF_ROLES:
            problems.add(row.line, f"role {c['role']!r} is not one of {', '.join(STAFF_ROLES)}")
            good.discard("role")
        if role == "trust_admin" and c["school_id"]:
            problems.add(row.line, "a trust_admin belongs to a trust: leave school_id empty")
            good.discard("school_id")
        if "email" in good and not _plausible_email(c["email"]):
            problems.add(row.line, f"email {c['email']!r} is not an email address")
            good.discard("email")
        if not {"staff_id", "email", "name", "role"} <= good or (scope not in good):
            continue
        attrs = {
            "email": c["email"].lower(),
            "name": c["name"],
            "role": role,
            "school_id": c["school_id"],
            "trust_id": c["trust_id"],
        }
        if not same.check("staff", c["staff_id"], row, attrs):
            continue
        # One address, one account: a second staff_id with it would be dropped by identity.
        owner = emails.setdefault(attrs["email"], (c["staff_id"], row.line))
        if owner[0] != c["staff_id"]:
            problems.add(row.line, f"email {c['email']} is staff {owner[0]}'s too (line {owner[1]})")
            continue
        staff.setdefault(c["staff_id"], {**c, "role": role})
    problems.raise_if_any()
    return list(staff.values())


def _plausible_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at and local and "." in domain.strip(".") and not any(ch.isspace() for ch in value))


@dataclass
class RosterPlan:
    """What a checked roster file holds, each id once, in file order."""

    schools: dict[str, dict[str, str]] = field(default_factory=dict)
    classes: dict[str, dict[str, str]] = field(default_factory=dict)
    pupils: dict[str, dict[str, str]] = field(default_factory=dict)
    pupil_classes: dict[str, list[str]] = field(default_factory=dict)
    # With the contact columns: each pupil's (address, relationship), the full set, maybe none.
    contacts_given: bool = False
    contacts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def events(self) -> list[tuple[str, Any]]:
        """The events to publish: schools, then classes, then pupils (each with all its classes)."""
        from contracts import platform

        out: list[tuple[str, Any]] = []
        for sid, c in self.schools.items():
            event = platform.SchoolUpserted(
                trust_id=c["trust_id"],
                school_id=sid,
                name=c["school_name"],
                timezone=c["timezone"],
                trust_name=c["trust_name"],
            )
            out.append((platform.SCHOOL_UPSERTED, event))
        for cid, c in self.classes.items():
            out.append(
                (
                    platform.CLASS_UPSERTED,
                    platform.ClassUpserted(school_id=c["school_id"], class_id=cid, name=c["class_name"]),
                )
            )
        for pid, c in self.pupils.items():
            contacts = (
                [platform.RosterContact(email=e, relationship=r) for e, r in self.contacts.get(pid, [])]
                if self.contacts_given
                else None
            )
            pupil = platform.PupilUpserted(
                school_id=c["school_id"], pupil_id=pid, first_name=c["first_name"], last_name=c["last_name"],
                class_ids=self.pupil_classes.get(pid, []), contacts=contacts,
            )  # fmt: skip
            out.append((platform.PUPIL_UPSERTED, pupil))
        return out


def staff_events(staff: list[dict[str, str]]) -> list[tuple[str, Any]]:
    """One `platform.roster.staff.upserted.v1` a member of staff."""
    from contracts import platform

    return [
        (
            platform.STAFF_UPSERTED,
            platform.StaffUpserted(
                staff_id=s["staff_id"], email=s["email"], name=s["name"], role=s["role"],
                school_id=None if s["role"] == "trust_admin" else s["school_id"], trust_id=s["trust_id"] or None,
            ),
        )
        for s in staff
    ]  # fmt: skip


# -- publishing and waiting -----------------------------------------------------------------


class PublishFailed(Exception):
    """JetStream kept refusing an event."""


class NotApplied(Exception):
    """Linking had not applied every event when the time was up."""

    def __init__(self, applied: int, total: int, unavailable: bool) -> None:
        super().__init__(f"{applied} of {total} applied")
        self.applied, self.total, self.unavailable = applied, total, unavailable


class Progress:
    """At most one line every couple of seconds, and only once an operation takes that long."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.started = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            typer.echo(f"{self.what} {done} of {self.total} events ({now - self.started:.0f}s)", err=True)


async def publish_all(js: Any, events: list[tuple[str, Any]]) -> None:
    """Publish every event with its id as `Nats-Msg-Id`, a bounded number in flight at once."""
    from contracts.kit.settings import CommonSettings
    from contracts.kit.streams import ensure_streams
    from contracts.streams import PLATFORM

    # The services create PLATFORM at start-up; creating it here too (idempotent) lets a roster
    # be loaded before they first run: linking applies it when it starts.
    common = CommonSettings()
    # The same limits as the services set, or each would undo the other's.
    await ensure_streams(js, [PLATFORM], replicas=common.stream_replicas, max_bytes=common.stream_max_bytes)
    progress = Progress("published", len(events))
    pending = iter(events)
    done = 0

    async def worker() -> None:
        nonlocal done
        for subject, event in pending:
            await _publish_one(js, subject, event)
            done += 1
            progress.update(done)

    await asyncio.gather(*(worker() for _ in range(min(PUBLISH_CONCURRENCY, len(events)))))


async def _publish_one(js: Any, subject: str, event: Any) -> None:
    import nats.errors
    import nats.js.errors

    # Transient while a cluster elects a stream leader or a server restarts; the unchanged
    # Nats-Msg-Id makes a retry of a publish that did land a no-op within the duplicate window.
    transient = (
        nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError,
        nats.js.errors.ServiceUnavailableError, nats.js.errors.ServerError, TimeoutError,
    )  # fmt: skip
    payload = event.model_dump_json().encode()
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            await js.publish(subject, payload, timeout=5, headers={"Nats-Msg-Id": event.event_id})
            return
        except transient as exc:
            if attempt == PUBLISH_ATTEMPTS - 1:
                raise PublishFailed(
                    f"JetStream did not accept {subject} after {PUBLISH_ATTEMPTS} tries ({type(exc).__name__})"
                ) from exc
            await asyncio.sleep(min(4.0, 0.2 * 2**attempt))


async def wait_applied(nc: Any, event_ids: list[str], timeout: float) -> None:
    """Return once linking has applied every event; `NotApplied` after `timeout` seconds."""
    from contracts import linking
    from contracts.kit import rpc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    progress = Progress("applied", len(event_ids))
    missing = list(event_ids)
    delay = 0.05
    unavailable = False
    while True:
        still: list[str] = []
        for i in range(0, len(missing), STATUS_CHUNK):
            chunk = missing[i : i + STATUS_CHUNK]
            ask = max(0.5, min(5.0, deadline - loop.time()))
            try:
                reply = await rpc.call(
                    nc, linking.ROSTER_STATUS, linking.RosterStatusRequest(event_ids=chunk), timeout=ask
                )
            except (rpc.RpcUnavailable, rpc.RpcTimeout) as exc:
                # Linking may be starting or restarting: keep asking until the time is up.
                unavailable = isinstance(exc, rpc.RpcUnavailable)
                still.extend(missing[i:])
                break
            unavailable = False
            still.extend(reply.missing)
        missing = still
        if not missing:
            return
        progress.update(len(event_ids) - len(missing))
        if loop.time() >= deadline:
            raise NotApplied(len(event_ids) - len(missing), len(event_ids), unavailable)
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(1.0, delay * 2)


# -- commands -------------------------------------------------------------------------------


def _report_file_problems(err: RosterFileError) -> None:
    for line in err.problems[:MAX_PROBLEMS]:
        typer.echo(line, err=True)
    more = len(err.problems) - MAX_PROBLEMS
    if more > 0:
        typer.echo(f"… and {more} more problem{'s' if more > 1 else ''}", err=True)
    n = len(err.problems)
    typer.echo(f"portal: {n} problem{'s' if n > 1 else ''} in the file; nothing was imported", err=True)


def _load(parse: Callable[[Path, str], Any], file: Path) -> Any:
    from portal.cli import fail

    if not file.is_file():
        fail(f"{file}: no such file", 2)
    try:
        return parse(file, str(file))
    except RosterFileError as err:
        _report_file_problems(err)
        raise typer.Exit(1) from None


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


@roster_app.command("import")
def import_roster(
    file: Path = typer.Argument(..., metavar="FILE.csv", help=ROSTER_HELP),
    timeout: float = typer.Option(120.0, "--timeout", min=0.0, help="Seconds to wait for the portal to apply it."),
    check: bool = typer.Option(False, "--check", help="Only check the file; publish nothing."),
    full: bool = typer.Option(
        False,
        "--full",
        help="The file is the whole truth for the schools it names: their pupils missing from it have left (their "
        "links end) and their classes missing from it are removed.",
    ),
    yes: bool = typer.Option(
        False, "--yes", help="With --full: go ahead even when more than half the pupils of a school would leave."
    ),
) -> None:
    """Load schools, classes and pupils; returns once the portal has applied them."""
    from portal.cli import _nats_url, _run_with_nats, fail

    plan: RosterPlan = _load(parse_roster, file)
    counts = (
        f"{_plural(len(plan.schools), 'school', 'schools')}, {_plural(len(plan.classes), 'class', 'classes')}, "
        f"{_plural(len(plan.pupils), 'pupil', 'pupils')}"
    )
    if check:
        typer.echo(f"{file}: {counts}; the file is fine (nothing published)")
        return
    url = _nats_url()
    events = plan.events()

    removals = FullRemovals()

    async def run(nc: Any) -> str | None:
        if full:
            refusal = await removals.read(nc, plan, yes=yes)
            if refusal:
                return refusal
            events.extend(removals.events())
        try:
            await publish_all(nc.jetstream(), events)
        except PublishFailed as exc:
            return f"{exc}; events published so far are applied in the background, and importing the file again is safe"
        try:
            await wait_applied(nc, [e.event_id for _, e in events], timeout)
        except NotApplied as exc:
            why = (
                "no linking service answers"
                if exc.unavailable
                else f"linking has applied {exc.applied} of {exc.total} events"
            )
            return (
                f"timed out after {timeout:g}s waiting for the portal to apply the roster: {why}. Nothing is rolled "
                "back: the import continues in the background once linking runs (check `portal service linking` "
                "or `portal up`, and `portal dead-letters list`)"
            )
        return None

    error = _run_with_nats(url, run)
    if error:
        fail(error, 1)
    typer.echo(f"imported {counts} (applied){removals.summary() if full else ''}")


@dataclass
class FullRemovals:
    """What a `--full` file removes: the named schools' pupils and classes it no longer has."""

    leavers: list[str] = field(default_factory=list)
    classes: list[tuple[str, str]] = field(default_factory=list)  # (school_id, class_id)

    async def read(self, nc: Any, plan: RosterPlan, *, yes: bool) -> str | None:
        """Ask linking what each school has now; a refusal (nothing published) or None."""
        from contracts import linking
        from contracts.kit import rpc

        refusals = []
        for school_id in plan.schools:
            try:
                now = await rpc.call(nc, linking.ROSTER_SNAPSHOT, linking.RosterSnapshotRequest(school_id=school_id))
            except (rpc.RpcUnavailable, rpc.RpcTimeout):
                return (
                    "no linking service answers: --full needs it to tell which pupils left; nothing was changed "
                    "(start it with `portal up` or `portal service linking`)"
                )
            leaving = [p for p in now.pupil_ids if p not in plan.pupils]
            if now.pupil_ids and len(leaving) * 2 > len(now.pupil_ids) and not yes:
                refusals.append(
                    f"the file would remove {len(leaving)} of the {len(now.pupil_ids)} pupils of school {school_id} "
                    "(more than half)"
                )
            self.leavers.extend(leaving)
            self.classes.extend((school_id, c) for c in now.class_ids if c not in plan.classes)
        if refusals:
            return (
                "refused: "
                + "; ".join(refusals)
                + ". Nothing was changed: check the file holds every pupil of the school, or give --yes if they "
                "really left"
            )
        return None

    def events(self) -> list[tuple[str, Any]]:
        """Departures after the upserts (a pupil who moved school is upserted, not gone), then classes."""
        from contracts import platform

        out: list[tuple[str, Any]] = [(platform.PUPIL_LEFT, platform.PupilLeft(pupil_id=p)) for p in self.leavers]
        out += [(platform.CLASS_REMOVED, platform.ClassRemoved(school_id=s, class_id=c)) for s, c in self.classes]
        return out

    def summary(self) -> str:
        """`; 3 pupils left, 1 class removed`."""
        return (
            f"; {_plural(len(self.leavers), 'pupil', 'pupils')} left, "
            f"{_plural(len(self.classes), 'class', 'classes')} removed"
        )


@roster_app.command("import-staff")
def import_staff(
    file: Path = typer.Argument(..., metavar="FILE.csv", help=STAFF_HELP),
    check: bool = typer.Option(False, "--check", help="Only check the file; publish nothing."),
) -> None:
    """Load members of staff; identity creates their accounts and emails new ones a set-password link."""
    from portal.cli import _nats_url, _run_with_nats, fail

    staff: list[dict[str, str]] = _load(parse_staff, file)
    n = _plural(len(staff), "member of staff", "staff")
    if check:
        typer.echo(f"{file}: {n}; the file is fine (nothing published)")
        return
    url = _nats_url()
    events = staff_events(staff)

    async def run(nc: Any) -> str | None:
        try:
            await publish_all(nc.jetstream(), events)
        except PublishFailed as exc:
            return f"{exc}; importing the file again is safe"
        return None

    error = _run_with_nats(url, run)
    if error:
        fail(error, 1)
    # Identity has no "applied" query to wait on: say what happens next instead.
    typer.echo(f"published {len(staff)} staff; identity emails each new member a link to set their password")
