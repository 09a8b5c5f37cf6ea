"""The container image of deploy/Dockerfile, checked without a Docker daemon (none runs here).

What can be checked without building it is: hadolint finds nothing in the Dockerfile; its final
stage is the slim Python image with no build tools, runs as a non-root user and starts
`portal service NAME`; and its build stage, replayed here (the files its COPY lines take, less
what .dockerignore leaves out, then its `uv sync` commands with its environment), installs the
locked workspace into a fresh directory from which the entrypoint and every part run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
BIN = Path(sys.executable).parent
UV = ROOT / ".tools" / "bin" / "uv"
PARTS = ("identity", "linking", "notify", "overview", "gateway")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARGs and every stage's instructions (continuation lines joined)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in stage.all("ENV"):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    return env


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (or a folder it is in) out of the build context."""

    def regex(pattern: str) -> str:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return out

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(re.fullmatch(regex(p.strip("/")), c) for p in patterns for c in candidates)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = BIN / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_reports_what_it_should(tmp_path: Path) -> None:
    # The linter above is alive and strict: a Dockerfile with the usual faults fails it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y gcc\nRUN pip install uv\n")
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3013"):
        assert rule in result.stdout


def test_the_final_stage_is_slim_non_root_and_starts_a_part(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.image), final.image
    # Nothing is built or fetched in the image that runs: no package manager, no compiler, no uv.
    for run in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|apk|pip|uv|gcc|make|curl|wget)\b", run), run
    copies = final.all("COPY")
    assert copies and all(c.startswith("--from=") for c in copies), copies
    users = final.all("USER")
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, user  # numeric, so runAsNonRoot can check it
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    cmd = json.loads(final.all("CMD")[-1])
    command = entrypoint + cmd
    assert command[:2] == ["portal", "service"] and command[2] in PARTS, command


def test_the_build_stage_installs_the_locked_workspace_and_the_entrypoint_runs(
    dockerfile: tuple[dict[str, str], list[Stage]], tmp_path: Path
) -> None:
    _, stages = dockerfile
    build = stages[0]
    final = stages[-1]
    # The uv the Dockerfile installs is the one the Makefile (and so this test) uses.
    uv_pin = re.search(r"uv==([\w.]+)", " ".join(build.all("RUN")))
    assert uv_pin is not None
    make_version = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make_version is not None and uv_pin.group(1) == make_version.group(1)
    assert UV.exists(), "run `make install` first (it puts uv in .tools/)"

    # The build context: the repository's files less what .dockerignore leaves out.
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    context = [p for p in tracked if not ignored(p, patterns) and (ROOT / p).is_file()]
    assert "uv.lock" in context and not any(p.startswith(("tests/", ".git/", ".venv/")) for p in context)
    assert not any(p.endswith((".nk", ".key", ".pem")) for p in context)

    work = tmp_path / "src"
    venv = tmp_path / "opt-portal"
    build_env = env_of(build)
    assert build_env.get("UV_PROJECT_ENVIRONMENT") == "/opt/portal"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))},
        **build_env,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON": "python3.11",
    }
    ran_sync = 0
    for keyword, arg in build.instructions:
        if keyword == "WORKDIR":
            work.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = arg.split()
            target = work / dest
            for source in sources:
                if source == ".":
                    for p in context:
                        (target / p).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(ROOT / p, target / p)
                else:
                    assert source in context, f"{source} is left out of the build context"
                    dest_file = target / Path(source).name if dest.endswith("/") or dest == "./" else target
                    dest_file.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, dest_file)
        elif keyword == "RUN" and arg.startswith("uv "):
            result = subprocess.run(
                [str(UV), *shlex.split(arg)[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=600
            )
            assert result.returncode == 0, f"{arg}\n{result.stderr[-3000:]}"
            ran_sync += 1
    assert ran_sync == 2  # dependencies alone, then the portal's packages

    # The final stage's PATH puts the environment first: run its ENTRYPOINT and CMD from there.
    assert env_of(final)["PATH"].startswith("/opt/portal/bin:")
    run_env = {**os.environ, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PORTAL_DATA_DIR": str(tmp_path / "data")}
    run_env.pop("VIRTUAL_ENV", None)
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    cmd = json.loads(final.all("CMD")[-1])
    assert shutil.which(entrypoint[0], path=run_env["PATH"]) == str(venv / "bin" / entrypoint[0])
    helped = subprocess.run(
        [*entrypoint, *cmd[:-1], "--help"],
        env=run_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0 and "Run one replica of one part" in helped.stdout, helped.stderr
    unknown = subprocess.run(
        [*entrypoint, "service", "nonsense"],
        env=run_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unknown.returncode == 2 and "unknown part 'nonsense'" in unknown.stderr
    module = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "identity", "--help"],
        env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert module.returncode == 0 and "serve" in module.stdout, module.stderr

    # Every part imports with the runtime dependencies alone, from installed packages (not from
    # the source tree the build stage leaves behind), templates and migrations included.
    probe = (
        "import importlib, importlib.util, json, pathlib\n"
        "names = ['contracts', 'portal', 'gateway', 'identity', 'linking', 'notify', 'overview']\n"
        "for n in ['gateway.app', 'identity.app', 'linking.app', 'notify.app', 'overview.app']:\n"
        "    importlib.import_module(n)\n"
        "files = {}\n"
        "for n in names:\n"
        "    root = pathlib.Path(importlib.util.find_spec(n).origin).parent\n"
        "    files[n] = [str(root)] + sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())\n"
        "dev = [m for m in ('pytest', 'ruff', 'mypy', 'hadolint') if importlib.util.find_spec(m)]\n"
        "print(json.dumps({'files': files, 'dev': dev}))\n"
    )
    probed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        env=run_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probed.returncode == 0, probed.stderr[-3000:]
    found = json.loads(probed.stdout)
    assert found["dev"] == []  # --no-dev: no test or lint tools in the image
    sources = {
        "contracts": ROOT / "contracts/src/contracts",
        "portal": ROOT / "deploy/src/portal",
        "gateway": ROOT / "gateway/src/gateway",
        **{s: ROOT / f"services/{s}/src/{s}" for s in ("identity", "linking", "notify", "overview")},
    }
    for name, src in sources.items():
        installed_root, *installed = found["files"][name]
        assert installed_root.startswith(str(venv)), f"{name} runs from {installed_root}, not the environment"
        wanted = {
            str(Path(p).relative_to(src.relative_to(ROOT)))
            for p in tracked
            if p.startswith(f"{src.relative_to(ROOT)}/") and "__pycache__" not in p
        }
        missing = wanted - set(installed)
        assert not missing, f"{name}: not installed: {sorted(missing)[:10]}"
