"""A loopback rig for the job lifecycle: the API sandbox, a job store, the listener, a tracker."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.database import async_database_url
from bot.jobs.spending import Spending
from bot.jobs.store import Job, JobStore
from bot.jobs.tables import metadata
from bot.jobs.throttle import Pace, SubmitThrottle
from bot.jobs.tracker import Tracker
from bot.jobs.types import SWEEP_SECONDS, PollPolicy, RetryPolicy, TrackerSettings
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.sandbox import SandboxAPI
from bot.web import Listener
from tests.conftest import FAST_POLL, RunningSandbox
from tests.fakes.publisher import RecordingPublisher
from tests.names import JobKind


def crowded_windows(
    sandbox: SandboxAPI, endpoints: Collection[str], rate: int, per: float
) -> list[float]:
    """Arrival times of calls to ``endpoints`` that open a window of ``per`` seconds holding
    more than ``rate`` of them (the vendor's side of the pace)."""
    arrivals = sorted(c.at for c in sandbox.calls if c.endpoint in endpoints)
    return [
        arrivals[i] for i in range(len(arrivals) - rate) if arrivals[i + rate] - arrivals[i] < per
    ]


# A database as the release before migrations left it (tests/fixtures/release_schema_*.sql): its
# schema and four jobs on the grid RELEASE_GRID, by id.
FIXTURES = Path(__file__).parents[1] / "fixtures"
RELEASE_GRID = "grid-1"
RELEASE_LIVE_UPSCALE = "b7068d8b956e13042d8c36bc"  # image 2, requested
RELEASE_FAILED_UPSCALE = "f81c0a9c197bab1f11f6cf85"  # image 3
RELEASE_RUNNING_VARY = "17a0b6dbf09c296e105a6ac8"  # image 1, submitted
RELEASE_DELIVERED_REROLL = "02a870cdc85b3f728038d40a"


def release_sql(dialect: str) -> str:
    return (FIXTURES / f"release_schema_{dialect}.sql").read_text()


def release_sqlite(path: Path) -> str:
    """A SQLite file made by the release before migrations, with its four jobs; its URL."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(release_sql("sqlite"))
    return f"sqlite:///{path}"


POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def postgres_admin() -> Any:
    """A plain asyncpg connection to the local PostgreSQL; skips the test where none answers."""
    try:
        return await asyncpg.connect(POSTGRES_URL, timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {type(exc).__name__}: {exc}")


@contextlib.asynccontextmanager
async def postgres_schema(prefix: str) -> AsyncIterator[Callable[[], AsyncEngine]]:
    """A schema of its own on the local PostgreSQL, with the store's tables, so a test cannot
    touch anything else in the database; yields a maker of engines bound to it (one per
    "process"), all disposed and the schema dropped afterwards. Skips where none answers."""
    admin = await postgres_admin()
    schema = f"{prefix}_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    engines: list[AsyncEngine] = []

    def engine() -> AsyncEngine:
        made = create_async_engine(
            async_database_url(POSTGRES_URL),
            connect_args={"server_settings": {"search_path": schema}},
        )
        engines.append(made)
        return made

    try:
        async with engine().begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield engine
    finally:
        for made in engines:
            await made.dispose()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@dataclass
class Rig:
    sandbox: SandboxAPI
    api_base: str
    session: aiohttp.ClientSession
    database_url: str
    listener: Listener
    listener_url: str
    store: JobStore
    publisher: RecordingPublisher = field(default_factory=RecordingPublisher)
    # One bot token across 'restarts', as in production.
    callback_secrets: CallbackSecrets = field(
        default_factory=lambda: CallbackSecrets.from_token("t" * 60)
    )
    trackers: list[Tracker] = field(default_factory=list)

    def tracker(
        self,
        *,
        callbacks: bool = True,
        deadline: float = 30.0,
        poll: PollPolicy = FAST_POLL,
        publisher: RecordingPublisher | None = None,
        store: JobStore | None = None,
        watermark: str | None = None,
        throttle: Pace | None = None,
        submit_retry_delays: tuple[float, ...] = (0.01, 0.02, 0.05),
        keep_retry_delays: tuple[float, ...] = (0.05, 0.1, 0.2),
        max_jobs_per_user: int | None = None,
        api_base: str | None = None,
        vary_index_base: int | None = None,
        lease_seconds: float | None = None,
        lease_owner: str | None = None,
        spending: Spending | None = None,
        sweep_seconds: float = SWEEP_SECONDS,
    ) -> Tracker:
        """A tracker wired to the listener (one at a time: a new one is a 'restarted bot').

        Unless a test is about pacing, submissions are not paced: tests start many at once.
        """
        client = MidjourneyClient(self.session, api_base or self.api_base, "test-key", timeout=5)
        tracker = Tracker(
            store or self.store,
            client,
            publisher or self.publisher,
            TrackerSettings(
                callback_base=self.listener_url if callbacks else None,
                deadline_seconds=deadline,
                watermark=watermark,
                vary_index_base=vary_index_base,
                max_jobs_per_user=max_jobs_per_user,
                delivery_retries=2,
                poll=poll,
                retry=RetryPolicy(submit_delays=submit_retry_delays, keep_delays=keep_retry_delays),
                sweep_seconds=sweep_seconds,
            ),
            callback_secrets=self.callback_secrets,
            throttle=throttle or SubmitThrottle(1000, 1.0, max_waiting=1000),
            lease_seconds=lease_seconds,
            lease_owner=lease_owner,
            spending=spending,
        )
        self.listener.tracker = tracker
        self.trackers.append(tracker)
        return tracker

    async def recorded(
        self,
        kind: JobKind,
        parent: str,
        index: int | None,
        *,
        user: int = 42,
        prompt: str | None = "a red fox in snow",
    ) -> Job:
        """A click as the store holds it right after it was recorded (state requested), as if
        the bot had died before the API call."""
        return await self.store.create(
            kind=kind,
            parent_task_id=parent,
            image_index=index,
            requester_id=user,
            guild_id=1,
            channel_id=555,
            grid_message_id=777,
            prompt=prompt,
            options={"speed": "fast"},
            deadline_seconds=60,
            callback_secret=self.callback_secrets.new(),
        )

    async def post_to_api(self, endpoint: str, body: dict[str, Any]) -> str:
        """POST ``body`` to the API as another client, or a bot that died since; the task id."""
        async with self.session.post(
            f"{self.api_base}/api/v1/mj/{endpoint}",
            json=body,
            headers={"Authorization": "Bearer test-key"},
        ) as response:
            task_id: str = (await response.json())["data"]["taskId"]
        return task_id

    def grid(self, prompt: str = "a red fox in snow") -> str:
        """A finished generation, as if /imagine had run earlier."""
        return self.sandbox.add_generation(prompt=prompt)


@pytest.fixture
async def rig(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[Rig]:

    listener = Listener()
    port = await listener.start("127.0.0.1", 0)
    database_url = f"sqlite:///{tmp_path}/jobs.sqlite3"
    store = await JobStore.open(database_url)
    session = aiohttp.ClientSession()
    rig = Rig(
        sandbox=sandbox.api,
        api_base=sandbox.base_url,
        session=session,
        database_url=database_url,
        listener=listener,
        listener_url=f"http://127.0.0.1:{port}",
        store=store,
    )
    try:
        yield rig
    finally:
        for tracker in rig.trackers:
            await tracker.close()
        await listener.close()
        await session.close()
        await store.close()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every function sent to an aiosqlite thread from now on."""
    sent: list[str] = []
    real = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return sent
