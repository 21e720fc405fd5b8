"""``python -m bot`` as a newcomer first meets it: its options, where settings come from, a
database that cannot be opened, and a host whose disk forgets. Real processes; each failure is
one line and exit code 2, without a traceback or a secret."""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.setting_parsers import SettingsError
from tests.fakes.cluster import free_port
from tests.jobs.conftest import POSTGRES_URL
from tests.test_config import API_KEY, DB_PASSWORD, MINIMAL, TOKEN, run_bot

# Enough to pass every settings check: what fails afterwards is the database.
SANDBOX = {"DISCORD_TOKEN": TOKEN, "MJ_API_BASE_URL": "sandbox", "HOST": "127.0.0.1"}


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for secret in (TOKEN, API_KEY, DB_PASSWORD):
        assert secret not in result.stderr + result.stdout
    return lines[0]


def postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def local_postgres(database: str) -> str:
    """The test PostgreSQL's URL with another database, and a password it should not print."""
    base = POSTGRES_URL.rsplit("/", 1)[0]
    user, _, host = base.removeprefix("postgresql://").rpartition("@")
    user = user.split(":", 1)[0]
    return f"postgresql://{user}:{DB_PASSWORD}@{host}/{database}"


# ----- the database at start -------------------------------------------------------------------


def test_an_unreachable_postgresql_is_one_line_naming_database_url(tmp_path: Path) -> None:
    port = free_port()  # closed: nothing listens there any more
    url = f"postgresql://bot:{DB_PASSWORD}@127.0.0.1:{port}/jobs"
    line = one_line(run_bot(tmp_path, **SANDBOX, DATABASE_URL=url))
    assert f"DATABASE_URL postgresql://bot:***@127.0.0.1:{port}/jobs" in line
    assert "connection refused" in line
    assert "listener" not in line


def test_an_unknown_database_host_is_one_line_naming_it(tmp_path: Path) -> None:
    url = f"postgresql://bot:{DB_PASSWORD}@no-such-host.invalid/jobs"
    line = one_line(run_bot(tmp_path, **SANDBOX, DATABASE_URL=url))
    assert "DATABASE_URL" in line and "unknown host no-such-host.invalid" in line
    assert "listener" not in line


@pytest.mark.skipif(not postgres_reachable(), reason="no PostgreSQL at 127.0.0.1:5432")
def test_a_missing_postgresql_database_is_one_line_naming_it(tmp_path: Path) -> None:
    # The local server trusts its users (any password works), so the refusal tried here is a
    # database that does not exist; a wrong password takes the same way out (asyncpg's error).
    url = local_postgres("no_such_database_i21")
    line = one_line(run_bot(tmp_path, **SANDBOX, DATABASE_URL=url))
    assert "DATABASE_URL" in line and ":***@" in line
    assert 'database "no_such_database_i21" does not exist' in line


def test_a_sqlite_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the folder should be")
    url = f"sqlite:///{tmp_path}/data/bot.sqlite3"
    line = one_line(run_bot(tmp_path, **SANDBOX, DATABASE_URL=url))
    assert "DATABASE_URL" in line and "cannot create the folder" in line
    assert "listener" not in line


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        # The tests run as root, where chmod 000 stops nothing: what cannot be opened is a folder
        # in the file's place, or a file that is not SQLite's.
        (lambda path: path.mkdir(), "unable to open database file"),
        (lambda path: path.write_text("not a database\n" * 100), "file is not a database"),
    ],
    ids=["a-folder", "not-sqlite"],
)
def test_an_unusable_sqlite_file_is_one_line(tmp_path: Path, make: object, reason: str) -> None:
    path = tmp_path / "bot.sqlite3"
    assert callable(make)
    make(path)
    line = one_line(run_bot(tmp_path, **SANDBOX, DATABASE_URL=f"sqlite:///{path}"))
    assert "DATABASE_URL" in line and reason in line


# ----- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--help", "-h", "--version"])
def test_help_and_version_answer_without_starting(tmp_path: Path, option: str) -> None:
    # No token and the default SQLite path: a start would complain or create data/.
    result = run_bot(tmp_path, option)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert not (tmp_path / "data").exists()
    if option == "--version":
        assert (
            result.stdout.strip() == f"python -m bot {importlib.metadata.version('mj-upscale-bot')}"
        )
    else:
        assert "--env-file" in result.stdout and "--version" in result.stdout
        assert "README.md, section Settings" in result.stdout and ".env.example" in result.stdout


def test_a_missing_env_file_is_one_line(tmp_path: Path) -> None:
    line = one_line(run_bot(tmp_path, "--env-file", "prod.env", **MINIMAL))
    assert line == "configuration error: --env-file prod.env: no such file"


def test_env_file_names_the_file_read(tmp_path: Path) -> None:
    settings = tmp_path / "conf" / "bot.env"
    settings.parent.mkdir()
    settings.write_text(f"DISCORD_TOKEN={TOKEN}\nMJ_API_KEY={API_KEY}\nPORT=abc\n")
    # A .env beside it is not read when another file is named.
    (tmp_path / ".env").write_text("PORT=also-bad-but-unread\n")
    line = one_line(run_bot(tmp_path, "--env-file", str(settings)))
    assert "PORT" in line and "'abc'" in line
    assert f"settings read from the environment and {settings}" in line


def test_without_dotenv_the_line_says_where_it_looked(tmp_path: Path) -> None:
    line = one_line(run_bot(tmp_path))
    assert "DISCORD_TOKEN is required" in line
    assert f"no .env in {tmp_path}: settings read from the environment only" in line


# ----- hosts whose disk is wiped ---------------------------------------------------------------


def test_sqlite_on_heroku_is_refused_with_both_ways_out(tmp_path: Path) -> None:
    line = one_line(run_bot(tmp_path, **SANDBOX, DYNO="web.1"))
    assert "Heroku (DYNO is set)" in line
    assert "PostgreSQL" in line and "SQLITE_ON_EPHEMERAL_DISK=true" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("variable", "platform"),
    [
        ("DYNO", "Heroku"),
        ("RAILWAY_ENVIRONMENT_NAME", "Railway"),
        ("RAILWAY_PROJECT_ID", "Railway"),
        ("FLY_APP_NAME", "Fly.io"),
        ("RENDER", "Render"),
    ],
)
def test_sqlite_on_an_ephemeral_disk_needs_saying_so(variable: str, platform: str) -> None:
    env = {**MINIMAL, variable: "x"}
    with pytest.raises(SettingsError, match=f"on {platform} "):
        load_settings(env)
    assert load_settings({**env, "SQLITE_ON_EPHEMERAL_DISK": "true"}).database_url.startswith(
        "sqlite"
    )
    postgres = "postgres://u:p@db.example.com/bot"
    assert load_settings({**env, "DATABASE_URL": postgres}).database_url == postgres
