"""Faults around the kinds as plug-ins, the generic dedupe key and the migrations, found by the
attacker's review of issue 22: a deploy rolled back and forward, an older process beside a newer
one, a schema newer than the code, a kind no plug-in registers, a forged button."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import IntegrityError

from bot.jobs import migrations
from bot.jobs.database import Database, StoreUnavailable
from bot.jobs.kinds import register, unregister
from bot.jobs.kinds.upscale import Upscale
from bot.jobs.store import DuplicateJob, JobState, JobStore
from bot.jobs.tables import jobs
from tests.jobs.conftest import RELEASE_GRID, Rig, release_sqlite
from tests.jobs.test_migrations import DIALECTS, database
from tests.names import JobKind

COLUMNS = (
    "id, kind, parent_task_id, image_index, upstream_task_id, requester_id, guild_id, "
    "channel_id, grid_message_id, status_message_id, result_message_id, callback_secret, state, "
    "error, result_urls, prompt, options, created_at, updated_at, deadline_at, completed_at, "
    "delivered_at"
)


def old_row(n: int, kind: str, parent: str, index: int | None, state: str) -> str:
    """A row as the release before migrations stored it."""
    image = "NULL" if index is None else str(index)
    return (
        f"INSERT INTO jobs ({COLUMNS}) VALUES ('{n:024d}', '{kind}', '{parent}', {image}, NULL, "
        f"7, 1, 555, NULL, NULL, NULL, 'secret-{n}', '{state}', NULL, '[]', 'p', '{{}}', "
        "1.0, 1.0, 9999999999.0, NULL, NULL)"
    )


# What the old partial indexes allowed, mid-flight: several failed upscales of one image beside
# a delivered one, a delivered and a running variation of one image, finished re-rolls beside a
# running one, and a job in every state.
MID_FLIGHT = [
    old_row(1, "upscale", "grid-2", 0, "failed"),
    old_row(2, "upscale", "grid-2", 0, "failed"),
    old_row(3, "upscale", "grid-2", 0, "failed"),
    old_row(4, "upscale", "grid-2", 0, "delivered"),
    old_row(5, "vary", "grid-2", 1, "delivered"),
    old_row(6, "vary", "grid-2", 1, "failed"),
    old_row(7, "vary", "grid-2", 1, "submitting"),
    old_row(8, "reroll", "grid-2", None, "delivered"),
    old_row(9, "reroll", "grid-2", None, "failed"),
    old_row(10, "reroll", "grid-2", None, "succeeded"),
    old_row(11, "upscale", "grid-2", 1, "succeeded"),
    old_row(12, "upscale", "grid-2", 2, "submitted"),
    old_row(13, "imagine", "", None, "requested"),
    old_row(14, "vary", "grid-2", 2, "requested"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_mid_flight_database_with_old_duplicates_migrates(
    dialect: str, tmp_path: Path
) -> None:
    async with database(dialect, tmp_path, release=True) as engine:
        made = engine()
        async with made.begin() as conn:
            for row in MID_FLIGHT:
                await conn.execute(sa.text(row))
        await migrations.upgrade(made)
        async with made.connect() as conn:
            rows = await conn.execute(sa.select(jobs.c.id, jobs.c.dedupe_key))
            keys = {int(str(i)) for i, k in rows if k is not None and str(i).isdigit()}
        assert keys == {4, 7, 10, 11, 12, 14}
        store = JobStore(Database(made))
        with pytest.raises(DuplicateJob) as twin:
            await store.create(
                kind=JobKind.UPSCALE,
                requester_id=5,
                guild_id=1,
                channel_id=555,
                deadline_seconds=600,
                parent_task_id="grid-2",
                image_index=0,
            )
        assert twin.value.job.id == f"{4:024d}"


async def test_downgrade_on_sqlite_keeps_the_old_partial_indexes(tmp_path: Path) -> None:
    """The revision's downgrade must give back the three PARTIAL indexes: batch mode copies
    the table (drop_column) and must neither lose them nor make them total."""
    url = release_sqlite(tmp_path / "db.sqlite3")
    database_ = await Database.open(url)
    try:
        async with database_.engine.begin() as conn:
            for row in MID_FLIGHT:
                await conn.execute(sa.text(row))

            def down(sync: sa.Connection) -> None:
                command.downgrade(migrations.config(sync), "baseline")

            await conn.run_sync(down)
        async with database_.engine.connect() as conn:
            sql = await conn.execute(
                sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
            )
            indexes = {str(name): str(text) for name, text in sql}
    finally:
        await database_.close()
    for name in ("uq_live_upscale", "uq_running_vary", "uq_running_reroll"):
        assert name in indexes
        assert "WHERE" in indexes[name].upper(), indexes[name]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_schema_ahead_of_the_code_is_a_one_line_refusal(
    dialect: str, tmp_path: Path
) -> None:
    """A rollback of the deployment (the database at a revision this code does not know) is
    refused as StoreUnavailable (one line, exit 2 in `python -m bot db`), not an Alembic
    traceback."""
    async with database(dialect, tmp_path, release=False) as engine:
        made = engine()
        await migrations.upgrade(made)
        async with made.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'v3_newer'"))
        if dialect == "sqlite":
            url = f"sqlite:///{tmp_path}/db.sqlite3"
            with pytest.raises(StoreUnavailable):
                await Database.open(url)
        else:
            # Database.open makes StoreUnavailable of it (an engine with a schema of its own
            # cannot be given to it), as of the driver's errors.
            with pytest.raises(migrations.SchemaAhead):
                await migrations.upgrade(made)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_deploy_rolled_back_and_forward_still_dedupes(dialect: str, tmp_path: Path) -> None:
    """Deploy (head), roll back to the release before migrations (its start re-creates
    the three partial indexes with create_all(checkfirst); its inserts leave dedupe_key NULL),
    roll forward (at head already: nothing migrates). A click on the image the old release is
    upscaling gets the running job back (DuplicateJob), not a RuntimeError after five
    retries."""
    async with database(dialect, tmp_path, release=False) as engine:
        made = engine()
        await migrations.upgrade(made)

        def old_release_starts(sync: sa.Connection) -> None:
            from bot.jobs.migrations.baseline import schema

            for table in schema().sorted_tables:
                for index in table.indexes:
                    index.create(sync, checkfirst=True)

        async with made.begin() as conn:
            await conn.run_sync(old_release_starts)
            await conn.execute(sa.text(old_row(21, "upscale", RELEASE_GRID, 0, "submitted")))
        await migrations.upgrade(made)
        store = JobStore(Database(made))
        with pytest.raises(DuplicateJob):
            await store.create(
                kind=JobKind.UPSCALE,
                requester_id=5,
                guild_id=1,
                channel_id=555,
                deadline_seconds=600,
                parent_task_id=RELEASE_GRID,
                image_index=0,
            )


class Ghost(Upscale):
    """A plug-in kind (an upscale-like rule: held while it did not fail), without a button."""

    name = "ghost"
    button = None


async def test_a_failed_job_of_an_unregistered_kind_gives_its_dedupe_key_back(
    tmp_path: Path,
) -> None:
    """A job of a kind whose plug-in is gone (removed, or a newer version's row after a
    rollback) that fails gives its key back: once the plug-in is back, a click on that image is
    a new job, not a 'duplicate' of a failed one."""
    store = await JobStore.open(f"sqlite:///{tmp_path}/jobs.sqlite3")
    register(Ghost())
    try:

        async def click() -> object:
            return await store.create(
                kind="ghost",
                requester_id=5,
                guild_id=1,
                channel_id=555,
                deadline_seconds=600,
                parent_task_id="grid-9",
                image_index=0,
            )

        first = await click()
        unregister("ghost")
        failed = await store.transition(
            first.id,  # type: ignore[attr-defined]
            (JobState.REQUESTED,),
            JobState.FAILED,
            error="gone",
        )
        assert failed is not None and failed.state is JobState.FAILED
        register(Ghost())
        # The failed job no longer holds: a new click is a new job.
        second = await click()
        assert second.id != first.id  # type: ignore[attr-defined]
    finally:
        unregister("ghost")
        await store.close()


async def test_an_integrity_error_that_is_not_the_dedupe_is_not_retried_or_renamed(
    tmp_path: Path,
) -> None:
    """An IntegrityError on another unique column (callback_secret here) is the driver's error,
    not a twin retried five times or a DuplicateJob of whatever twin exists."""
    store = await JobStore.open(f"sqlite:///{tmp_path}/jobs.sqlite3")
    try:

        async def click(index: int) -> object:
            return await store.create(
                kind=JobKind.UPSCALE,
                requester_id=5,
                guild_id=1,
                channel_id=555,
                deadline_seconds=600,
                parent_task_id="grid-9",
                image_index=index,
                callback_secret="the-same-secret",
            )

        await click(0)
        with pytest.raises(IntegrityError):
            await click(1)
    finally:
        await store.close()


async def test_a_button_under_the_wrong_product_pays_nothing(rig: Rig) -> None:
    """U<n> asked of a task the bot knows is an IMAGE (an upscale it delivered) is refused
    before anything is paid: the kind's Button says under which product it goes."""
    tracker = rig.tracker()
    grid = rig.grid()
    first = await tracker.request_on_grid(
        JobKind.UPSCALE,
        parent_task_id=grid,
        image_index=0,
        requester_id=42,
        guild_id=1,
        channel_id=555,
        grid_message_id=777,
    )
    assert first.job.upstream_task_id is not None
    rig.sandbox.complete(first.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    done = await rig.store.get(first.job.id)
    assert done is not None and done.state is JobState.DELIVERED
    image_task = done.upstream_task_id
    assert image_task is not None
    calls = rig.sandbox.count("generateUpscale")
    try:
        outcome = await tracker.request_on_grid(
            JobKind.UPSCALE,
            parent_task_id=image_task,
            image_index=0,
            requester_id=42,
            guild_id=1,
            channel_id=555,
            grid_message_id=778,
        )
    except Exception:
        outcome = None
    if outcome is not None:
        for _ in range(100):
            job = await rig.store.get(outcome.job.id)
            if job is not None and job.finished:
                break
            await asyncio.sleep(0.05)
    assert rig.sandbox.count("generateUpscale") == calls


@pytest.mark.parametrize("state", ["requested", "submitted"])
async def test_a_job_of_an_unregistered_kind_at_recovery(
    rig: Rig, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A row whose kind no plug-in registers (a removed plug-in, a newer version's row after a
    rollback): the start must not crash, the other jobs are recovered and delivered, and the
    stray job is ended once (failed, its use given back), not retried by every sweep."""
    grid = rig.grid()
    stray = await rig.recorded(JobKind.UPSCALE, grid, 1)
    ok = await rig.recorded(JobKind.UPSCALE, grid, 2)
    # Its paid task, finished at the API.
    task = rig.grid("paid for by the stray job")
    async with rig.store.engine.begin() as conn:
        await conn.execute(
            jobs.update()
            .where(jobs.c.id == stray.id)
            .values(kind="gone", state=state, upstream_task_id=task)
        )
    tracker = rig.tracker(sweep_seconds=0.05)
    assert await tracker.recover() == 2
    ok_task = None
    for _ in range(100):
        current = await rig.store.get(ok.id)
        assert current is not None
        if current.upstream_task_id is not None:
            ok_task = current.upstream_task_id
            break
        await asyncio.sleep(0.02)
    assert ok_task is not None
    rig.sandbox.complete(ok_task)
    await rig.publisher.wait_for(lambda: ok.id in rig.publisher.tidied)
    await asyncio.sleep(0.5)  # ten sweeps
    crashes = [r for r in caplog.records if r.exc_info and "gone" in str(r.exc_info[1])]
    after = await rig.store.get(stray.id)
    assert after is not None
    assert after.state is JobState.FAILED
    assert len(crashes) <= 1


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_an_older_process_still_running_after_the_upgrade_keeps_dedupe(
    dialect: str, tmp_path: Path
) -> None:
    """A process of the release before migrations still running after the upgrade (a rolling
    deploy) stores jobs without dedupe_key: the release's partial indexes, kept, refuse its
    twins, and a new process finds its job by its columns: nothing is paid twice."""
    async with database(dialect, tmp_path, release=True) as engine:
        made = engine()
        await migrations.upgrade(made)
        async with made.begin() as conn:
            await conn.execute(sa.text(old_row(31, "upscale", "grid-7", 0, "submitted")))
        # A second old process takes the same click: the release's own index refuses it.
        try:
            async with made.begin() as conn:
                await conn.execute(sa.text(old_row(32, "upscale", "grid-7", 0, "requested")))
            old_twin_refused = False
        except IntegrityError:
            old_twin_refused = True
        store = JobStore(Database(made))
        with pytest.raises(DuplicateJob):
            await store.create(
                kind=JobKind.UPSCALE,
                requester_id=5,
                guild_id=1,
                channel_id=555,
                deadline_seconds=600,
                parent_task_id="grid-7",
                image_index=0,
            )
        assert old_twin_refused


def test_a_plugin_prefix_cannot_claim_another_kinds_custom_ids() -> None:
    """A plug-in's button prefix is letters and digits, and matched literally: "mj." would
    otherwise parse every U<n> click."""
    from bot.jobs.kinds import Button, Product

    class Dotted(Upscale):
        name = "dotted"
        button = Button("mj.", "D{n}", row=2, per_image=True, under=Product.GRID)

    try:
        with pytest.raises(ValueError):
            register(Dotted())
    finally:
        unregister("dotted")
    assert Dotted.button is not None
    assert Dotted.button.parse("mju:abcdef123:1") is None
