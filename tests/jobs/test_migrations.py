"""The schema's migrations (bot.jobs.migrations), on SQLite and on PostgreSQL: a database made
by the release before migrations, an empty one, two processes upgrading at once, and
``python -m bot db``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.jobs import migrations
from bot.jobs.allowances import Allowance
from bot.jobs.database import Database, async_database_url
from bot.jobs.ledger import LimitRow
from bot.jobs.spending import Rules, Spending
from bot.jobs.store import DuplicateJob, JobStore
from bot.jobs.tables import allowance_uses, jobs, metadata
from tests.jobs.conftest import (
    POSTGRES_URL,
    RELEASE_DELIVERED_REROLL,
    RELEASE_FAILED_UPSCALE,
    RELEASE_GRID,
    RELEASE_LIVE_UPSCALE,
    RELEASE_RUNNING_VARY,
    postgres_admin,
    release_sql,
    release_sqlite,
)
from tests.names import JobKind

ROOT = Path(__file__).parents[2]
DIALECTS = ("sqlite", "postgresql")


@contextlib.asynccontextmanager
async def database(
    dialect: str, tmp_path: Path, *, release: bool
) -> AsyncIterator[Callable[[], AsyncEngine]]:
    """An empty database, or one the release before migrations made (``release``); yields a
    maker of engines on it (one per "process"), all disposed afterwards."""
    engines: list[AsyncEngine] = []
    if dialect == "sqlite":
        path = tmp_path / "db.sqlite3"
        url = release_sqlite(path) if release else f"sqlite:///{path}"

        def engine() -> AsyncEngine:
            engines.append(create_async_engine(async_database_url(url)))
            return engines[-1]

        try:
            yield engine
        finally:
            for made in engines:
                await made.dispose()
        return
    admin = await postgres_admin()
    schema = f"migrations_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')

    def pg_engine() -> AsyncEngine:
        engines.append(
            create_async_engine(
                async_database_url(POSTGRES_URL),
                connect_args={"server_settings": {"search_path": schema}},
            )
        )
        return engines[-1]

    try:
        if release:
            await admin.execute(f'SET search_path TO "{schema}"; {release_sql("postgresql")}')
        yield pg_engine
    finally:
        for made in engines:
            await made.dispose()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


def differences(conn: sa.Connection) -> list[Any]:
    """What autogenerate would write to make the database match the models."""
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def at_head_and_like_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(migrations.revision) == migrations.head()
        assert await conn.run_sync(differences) == []


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_database_of_the_last_release_is_stamped_and_upgraded(
    dialect: str, tmp_path: Path
) -> None:
    async with database(dialect, tmp_path, release=True) as engine:
        made = engine()
        await migrations.upgrade(made)
        await at_head_and_like_the_models(made)
        async with made.connect() as conn:
            rows = await conn.execute(sa.select(jobs.c.id, jobs.c.dedupe_key))
            keys = {str(row[0]): row[1] for row in rows}
        assert keys == {
            RELEASE_LIVE_UPSCALE: f"upscale:{RELEASE_GRID}:2",
            RELEASE_FAILED_UPSCALE: None,
            RELEASE_RUNNING_VARY: f"vary:{RELEASE_GRID}:1",
            RELEASE_DELIVERED_REROLL: None,
        }
        store = JobStore(Database(made))

        def click(kind: JobKind, index: int | None) -> Any:
            return store.create(
                kind=kind,
                requester_id=5,
                guild_id=1,
                channel_id=555,
                deadline_seconds=600,
                parent_task_id=RELEASE_GRID,
                image_index=index,
            )

        with pytest.raises(DuplicateJob) as live:
            await click(JobKind.UPSCALE, 2)
        assert live.value.job.id == RELEASE_LIVE_UPSCALE
        with pytest.raises(DuplicateJob) as running:
            await click(JobKind.VARY, 1)
        assert running.value.job.id == RELEASE_RUNNING_VARY
        # What the old indexes let through still goes through: a failed upscale's image, a
        # delivered re-roll's grid.
        assert (await click(JobKind.UPSCALE, 3)).image_index == 3
        assert (await click(JobKind.REROLL, None)).kind == JobKind.REROLL
        # Upgrading again changes nothing.
        await migrations.upgrade(engine())
        await at_head_and_like_the_models(made)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_an_empty_database_upgraded_to_head_is_like_the_models(
    dialect: str, tmp_path: Path
) -> None:
    async with database(dialect, tmp_path, release=False) as engine:
        made = engine()
        await migrations.upgrade(made)
        await at_head_and_like_the_models(made)


@pytest.mark.parametrize("release", [False, True], ids=["empty", "release"])
async def test_two_processes_upgrading_at_once_on_postgresql_both_succeed(
    release: bool, tmp_path: Path
) -> None:
    async with database("postgresql", tmp_path, release=release) as engine:
        await asyncio.gather(migrations.upgrade(engine()), migrations.upgrade(engine()))
        await at_head_and_like_the_models(engine())


def bot_db(action: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("DISCORD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "bot", "db", action],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_m_bot_db_on_a_sqlite_file(tmp_path: Path) -> None:
    url = release_sqlite(tmp_path / "bot.sqlite3")
    head = migrations.head()
    current = bot_db("current", url)
    assert current.returncode == 0, current.stderr
    assert current.stdout.startswith(f"none (head is {head})")
    upgrade = bot_db("upgrade", url)
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout.strip() == f"upgraded from nothing to {head}"
    assert bot_db("current", url).stdout.strip() == f"{head} (head)"
    assert bot_db("upgrade", url).stdout.strip() == f"{head} (head)"
    history = bot_db("history", url)
    names = [line.split(":")[0] for line in history.stdout.splitlines()]
    # Oldest first, one line per revision file.
    versions = Path(migrations.__file__).parent / "versions"
    assert names[0] == "baseline" and names[-1] == head
    assert len(set(names)) == len(names) == len(list(versions.glob("v*.py")))


def test_python_m_bot_db_on_a_database_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "folder.sqlite3").mkdir()
    failed = bot_db("current", f"sqlite:///{tmp_path}/folder.sqlite3")
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert len(failed.stderr.strip().splitlines()) == 1
    assert failed.stderr.startswith("DATABASE_URL sqlite:///")
    assert "cannot be opened" in failed.stderr


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_release_database_keeps_its_learnt_costs_and_counted_requests(
    dialect: str, tmp_path: Path
) -> None:
    async with database(dialect, tmp_path, release=True) as engine:
        made = engine()
        async with made.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO credit_days (day, spent, last_credits, read_at, generation_cost,"
                    " upscale_cost) VALUES ('2026-12-05', 40, 960, 1.0, 11, 3),"
                    " ('2026-12-06', 0, 960, 2.0, 12, 3)"
                )
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO allowance_uses (job_id, guild_id, requester_id, category, at)"
                    " VALUES ('a', 1, 5, 'generation', 1.0), ('b', 1, 5, 'upscale', 2.0)"
                )
            )
        await migrations.upgrade(made)
        await at_head_and_like_the_models(made)
        ledger = JobStore(Database(made)).ledger
        day = await ledger.credit_day("2026-12-05")
        assert day is not None and (day.spent, day.generation_cost, day.upscale_cost) == (40, 11, 3)
        # The next day, and one with no reading yet, go by the last costs learnt; a key the
        # release did not know starts from its default.
        defaults = {"generation": 8, "upscale": 2, "mj_omni_reference": 16}
        assert await ledger.costs("2026-12-09", defaults) == {
            "generation": 12,
            "upscale": 3,
            "mj_omni_reference": 16,
        }
        async with made.connect() as conn:
            counted = await conn.execute(
                sa.select(allowance_uses.c.job_id, allowance_uses.c.cost_key)
            )
            assert {str(job): str(key) for job, key in counted} == {
                "a": "generation",
                "b": "upscale",
            }


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_limits_set_before_the_videos_allowance_are_kept_and_leave_videos_unset(
    dialect: str, tmp_path: Path
) -> None:
    async with database(dialect, tmp_path, release=False) as engine:
        made = engine()
        async with made.begin() as conn:
            # The revision before videos_allowance, with /mj limit rows in it.
            await conn.run_sync(
                lambda sync: command.upgrade(migrations.config(sync), "server_translation")
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO allowance_limits (guild_id, target_type, target_id, imagines,"
                    " upscales, updated_at) VALUES (1, 'role', 7, 100, -1, 1.0),"
                    " (1, 'member', 5, 3, NULL, 2.0)"
                )
            )
        await migrations.upgrade(made)
        await at_head_and_like_the_models(made)
        ledger = JobStore(Database(made)).ledger
        assert await ledger.limits(1) == [
            LimitRow("member", 5, 3, None, None),
            LimitRow("role", 7, 100, -1, None),
        ]
        # Not set anywhere: the member's videos are the settings'; the rest as before.
        spending = Spending(ledger, Rules(videos=4))
        assert await spending.allowance(1, 5, (7,)) == Allowance(3, None, 4)
        await ledger.set_limit(1, "role", 7, videos=9, now=3.0)
        assert await spending.allowance(1, 5, (7,)) == Allowance(3, None, 9)
        # And back: the downgrade drops the column and keeps the rows.
        async with made.begin() as conn:
            await conn.run_sync(
                lambda sync: command.downgrade(migrations.config(sync), "server_translation")
            )
            rows = await conn.execute(
                sa.text("SELECT target_id, imagines, upscales FROM allowance_limits")
            )
            assert sorted(tuple(row) for row in rows) == [(5, 3, None), (7, 100, -1)]
