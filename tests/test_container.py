"""The container files agree with what the bot needs: Dockerfile, .dockerignore, compose.yaml.

No container engine is needed: the files are read as text and checked against the code's own
defaults (the listener's port, the SQLite path, the shutdown grace). ``test_image_builds`` builds
and starts the image only where ``docker info`` answers.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from bot.config import Settings, load_settings
from bot.jobs.database import _sqlite_path
from bot.services import SHUTDOWN_GRACE_SECONDS
from bot.web import Listener

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "mj-upscale-bot:test"


# --- reading the files ---------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), one list per stage."""
    stages: list[list[tuple[str, str]]] = []
    current = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and blank lines, also inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        keyword, _, args = (current + line).partition(" ")
        current = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append((keyword, args.strip()))
    assert not current, "the Dockerfile ends inside a continued line"
    return stages


def runtime_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [args for kw, args in stage if kw == keyword]
    assert values, f"no {keyword} in the stage"
    return values[-1]


def exec_form(args: str) -> list[str]:
    """An instruction's command: the JSON (exec) form, or the shell form split into words."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def last_index(items: list[str], item: str) -> int:
    return len(items) - 1 - items[::-1].index(item)


def workdir(stage: list[tuple[str, str]]) -> PurePosixPath:
    path = PurePosixPath("/")
    for keyword, args in stage:
        if keyword == "WORKDIR":
            path = path / args  # a relative WORKDIR is relative to the previous one
    return path


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def default_settings() -> Settings:
    return load_settings({"DISCORD_TOKEN": "t" * 40, "MJ_API_BASE_URL": "sandbox"})


def default_data_dir() -> PurePosixPath:
    """Where the default DATABASE_URL puts the SQLite file inside the image: its directory."""
    path = _sqlite_path(default_settings().database_url)
    assert path is not None, "the default DATABASE_URL is not a SQLite file"
    return (workdir(runtime_stage()) / path.as_posix()).parent


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative, /-separated) out of the build context.

    Docker's rules, for the patterns used here: the last matching line wins, ``!`` re-includes,
    a pattern that matches a directory excludes everything under it, ``**/`` matches any depth.
    """
    result = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern]
        if pattern.startswith("**/"):
            candidates.append(pattern[3:])
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            result = not negate
    return result


def compose(name: str = "compose.yaml") -> dict:
    """A compose file, read as the YAML subset it is written in: nested mappings, lists of
    plain scalars, comments. No YAML library is a dependency of the project."""
    root: dict = {}
    stack: list[tuple[int, dict | list]] = [(-1, root)]
    lines = (ROOT / name).read_text().splitlines()
    for number, raw in enumerate(lines, 1):
        text = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not text.strip():
            continue
        indent = len(text) - len(text.lstrip())
        text = text.strip()
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        if text.startswith("- "):
            assert isinstance(parent, list), f"compose.yaml:{number}: list item outside a list"
            parent.append(_scalar(text[2:]))
            continue
        key, colon, value = text.partition(":")
        assert colon and isinstance(parent, dict), f"compose.yaml:{number}: not a mapping line"
        if value.strip():
            parent[key] = _scalar(value)
            continue
        # A key with nothing after it opens a mapping or a list, whichever its next line shows.
        following = next((n for n in lines[number:] if n.strip() and not _comment(n)), "")
        child: dict | list = [] if following.strip().startswith("- ") else {}
        nested = len(following) - len(following.lstrip()) > indent
        parent[key] = child if nested else None
        if nested:
            stack.append((indent, child))
    return root


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _scalar(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def the_service() -> dict:
    services = compose()["services"]
    assert len(services) == 1, "compose.yaml should run one service, the bot"
    return next(iter(services.values()))


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- the Dockerfile ------------------------------------------------------------------------------


def test_runtime_stage_runs_as_an_unprivileged_user() -> None:
    stage = runtime_stage()
    user = last(stage, "USER")
    name = user.split(":", 1)[0]
    assert name not in ("root", "0"), f"the image runs as {user}"
    # The user is made in this stage, and USER comes before the command it applies to.
    made = [a for kw, a in stage if kw == "RUN" and re.search(rf"useradd [^&]*\s{name}(\s|$)", a)]
    assert made, f"user {name} is not created in the runtime stage"
    keywords = [kw for kw, _ in stage]
    assert last_index(keywords, "USER") < last_index(keywords, "CMD")


def test_image_exposes_the_listeners_default_port() -> None:
    port = default_settings().port
    assert last(runtime_stage(), "EXPOSE").split() == [str(port)]


def test_data_directory_is_a_volume_the_user_owns() -> None:
    stage = runtime_stage()
    data = default_data_dir()
    assert data == PurePosixPath("/app/data")  # what README and compose.yaml name
    volumes = [PurePosixPath(v) for kw, a in stage if kw == "VOLUME" for v in exec_form(a)]
    assert any(data == v or v in data.parents for v in volumes), f"{data} is not in a VOLUME"
    # Made and handed to the user before VOLUME: changes made to a volume's path after it is
    # declared are thrown away.
    user = last(stage, "USER").split(":", 1)[0]
    keywords = [kw for kw, _ in stage]
    chown = [
        i
        for i, (kw, a) in enumerate(stage)
        if kw == "RUN" and re.search(rf"chown (-R )?{user}(:\w+)? {data}\b", a)
    ]
    assert chown, f"{data} is not chowned to {user}"
    assert chown[0] < keywords.index("VOLUME")


def test_image_runs_the_bot_module_like_the_procfile() -> None:
    stage = runtime_stage()
    command = exec_form(last(stage, "CMD"))
    assert command == ["python", "-m", "bot"]
    procfile = (ROOT / "Procfile").read_text().strip()
    assert procfile.split(":", 1)[1].split() == command
    assert not any(kw == "ENTRYPOINT" for kw, _ in stage)
    assert env_of(stage)["PYTHONUNBUFFERED"] == "1"  # log lines show up at once in `docker logs`


def test_image_installs_the_project_as_readme_does() -> None:
    stages = dockerfile_stages()
    installs = [
        shlex.split(a) for stage in stages for kw, a in stage if kw == "RUN" and "pip install" in a
    ]
    assert len(installs) == 1, "one pip install step"
    words = installs[0]
    targets = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
    assert targets == ["."], f"installs {targets}, not the project alone"
    # README's run command installs the same thing, without the test extra.
    readme = (ROOT / "README.md").read_text()
    run_line = next(line for line in readme.splitlines() if line.endswith("-m bot"))
    readme_words = shlex.split(run_line.split("pip install", 1)[1].split("&&", 1)[0])
    assert [w for w in readme_words if not w.startswith("-")] == targets
    # The virtualenv it installs into is what the runtime stage copies and puts first on PATH.
    venv = str(PurePosixPath(words[0]).parent.parent)
    runtime = stages[-1]
    copies = [shlex.split(a) for kw, a in runtime if kw == "COPY" and a.startswith("--from=")]
    assert any(c[1:] == [venv, venv] for c in copies), f"{venv} is not copied into the image"
    assert env_of(runtime)["PATH"].split(":")[0] == f"{venv}/bin"


def test_build_context_holds_what_the_install_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed |= {p.name for p in ROOT.glob(pattern.rstrip("*")) if (p / "__init__.py").exists()}
    build = dockerfile_stages()[0]
    copied = {
        str(PurePosixPath(src))
        for kw, a in build
        if kw == "COPY" and not a.startswith("--from=")
        for src in exec_form(a)[:-1]
    }
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"
    for path in sorted(needed):
        assert not ignored(path), f".dockerignore keeps {path} out of the build"
    assert not ignored("bot/__main__.py")


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in (".env", ".venv", ".venv/bin/python", ".git", "data", "data/bot.sqlite3"):
        assert ignored(path), f".dockerignore lets {path} into the build context"
    for path in (".pytest_cache", "bot/__pycache__/app.cpython-311.pyc"):
        assert ignored(path), f".dockerignore lets {path} into the build context"


async def test_healthcheck_asks_the_listener_with_python_alone() -> None:
    healthcheck = last(runtime_stage(), "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]  # no curl or wget in a slim image
    listener = Listener()
    port = await listener.start("127.0.0.1", 0)
    env = {**os.environ, "PORT": str(port)}

    async def check(**extra: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv[1:], env=env | extra, stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(proc.wait(), 20)

    try:
        assert await check() == 1, "healthy before the bot is set up"
        listener.tracker = object()  # type: ignore[assignment]  # set up: /healthz says ok
        assert await check() == 0
    finally:
        await listener.close()
    assert await check() != 0, "healthy with nothing listening"
    timeout = re.search(r"--timeout=(\S+)", options)
    assert timeout and seconds(timeout.group(1)) >= 5
    assert f"'PORT', '{default_settings().port}'" in argv[2]  # the default port without PORT


# --- compose.yaml --------------------------------------------------------------------------------


def test_compose_builds_the_image_and_reads_env_file() -> None:
    service = the_service()
    assert service["build"] == "."
    assert service["env_file"] == ".env"
    assert service["restart"] == "unless-stopped"
    port = default_settings().port
    assert f"{port}:{port}" in service["ports"]


def test_compose_keeps_the_database_on_a_named_volume() -> None:
    service = the_service()
    data = default_data_dir()
    mounts = [v.split(":") for v in service["volumes"]]
    named = [src for src, target, *_ in mounts if PurePosixPath(target) == data]
    assert named, f"no volume mounted on {data}"
    assert "/" not in named[0] and not named[0].startswith("."), "a bind mount, not a volume"
    assert named[0] in compose()["volumes"], f"volume {named[0]} is not declared"


def test_compose_gives_the_shutdown_its_grace() -> None:
    grace = seconds(the_service()["stop_grace_period"])
    assert grace >= 10
    assert grace > SHUTDOWN_GRACE_SECONDS + 1  # the drain, then the store and listener close


def test_the_scaling_compose_runs_three_replicas_on_postgresql_behind_a_proxy() -> None:
    services = compose("compose.scaling.yaml")["services"]
    bot = services["bot"]
    assert bot["build"] == "." and bot["env_file"] == ".env"
    assert bot["deploy"]["replicas"] == "3"
    assert bot["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert "@postgres/" in bot["environment"]["DATABASE_URL"]
    assert "postgres" in bot["depends_on"]
    assert seconds(bot["stop_grace_period"]) > SHUTDOWN_GRACE_SECONDS + 1
    assert services["postgres"]["image"].startswith("postgres:")
    # The proxy mounts the Caddyfile, which sends callbacks to every replica of the bot.
    proxy = services["proxy"]
    mount = next(v for v in proxy["volumes"] if "Caddyfile" in v).split(":")[0]
    caddyfile = (ROOT / mount).read_text()
    assert "/callbacks/*" in caddyfile and "/selfcheck/*" in caddyfile
    # The replicas' port as compose passes it from .env, the bot's default otherwise.
    assert f"dynamic a bot {{$PORT:{default_settings().port}}}" in caddyfile
    assert proxy["environment"]["PORT"] == f"${{PORT:-{default_settings().port}}}"
    # The password stays out of the URL, where @ : / would break it.
    assert "POSTGRES_PASSWORD" not in bot["environment"]["DATABASE_URL"]
    assert bot["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert "lb_policy round_robin" in caddyfile


def test_readme_shows_the_container_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up -d" in readme
    run = next(line for line in readme.splitlines() if "docker run" in line)
    words = shlex.split(run.split("docker run", 1)[1].split("&&", 1)[0])
    assert "--env-file" in words and words[words.index("--env-file") + 1] == ".env"
    port = default_settings().port
    assert words[words.index("-p") + 1] == f"{port}:{port}"
    volume = words[words.index("-v") + 1].split(":")
    assert PurePosixPath(volume[1]) == default_data_dir() and "/" not in volume[0]


# --- the real thing, where there is an engine ----------------------------------------------------


def _engine() -> str | None:
    """Why no image can be built here, or None when a container engine answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or [f"exit {info.returncode}"])[-1]
        return f"no container engine (`docker info`: {reason})"
    return None


def test_image_builds_and_starts() -> None:
    reason = _engine()
    if reason is not None:
        pytest.skip(reason)
    subprocess.run(["docker", "build", "-t", IMAGE, str(ROOT)], check=True, timeout=1800)
    try:
        uid = subprocess.run(
            ["docker", "run", "--rm", IMAGE, "id", "-u"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        assert uid.stdout.strip() not in ("", "0")
        # Without settings the bot stops with one line naming the missing one (exit 2).
        bare = subprocess.run(
            ["docker", "run", "--rm", IMAGE], capture_output=True, text=True, timeout=120
        )
        assert bare.returncode == 2, bare.stderr
        assert "DISCORD_TOKEN is required" in bare.stderr
        writable = subprocess.run(
            ["docker", "run", "--rm", IMAGE, "python", "-c", "open('data/probe', 'w')"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert writable.returncode == 0, writable.stderr
    finally:
        subprocess.run(["docker", "image", "rm", "-f", IMAGE], capture_output=True, timeout=120)
