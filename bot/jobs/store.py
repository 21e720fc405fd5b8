"""Where jobs live: atomic state transitions, dedupe enforced by a unique index, daily uses
counted in the step that stores a job (bot.jobs.admission). The tables are in bot.jobs.tables.

SQLAlchemy Core keeps SQLite (the default) and PostgreSQL (several replicas) on one code path.
Every state change is a conditional UPDATE (``WHERE state IN (...)``), so two processes or two
coroutines racing for the same job cannot both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.jobs import migrations
from bot.jobs.admission import OverQuota, Quota, TooManyJobs, admission, lock_keys, refusal
from bot.jobs.dedupe import dedupe_key, released_kinds
from bot.jobs.ledger import Ledger
from bot.jobs.tables import (
    FINAL_STATES,
    GRID_BUTTON_KINDS,
    UNFINISHED_STATES,
    allowance_uses,
    api_facts,
    follow_ups,
    jobs,
    leases,
    notices,
)
from bot.jobs.tables import JobKind as JobKind
from bot.jobs.tables import JobState as JobState

log = logging.getLogger(__name__)

# The longest a lease query may take before it counts as failed.
LEASE_QUERY_SECONDS = 3.0
# How long a write to SQLite waits for another connection's lock before "database is locked".
SQLITE_BUSY_SECONDS = 30.0

# The NOTIFY channel on which a process that took a callback rings the job's owner.
JOB_CHANNEL = "mjbot_jobs"
# Pooled connections a process's counted inserts may hold at once (the pool has 15): under the
# budget's lock they run one at a time anyway.
ADMITTING_CONNECTIONS = 3


@dataclass(frozen=True)
class FollowUp:
    """How to tell a job's requester something only they see: their interaction's follow-up
    webhook (the application id and the interaction token), alive until ``until`` (Unix
    seconds). The token is a credential while it lives: never in a log line, nor a repr."""

    application_id: int
    token: str = field(repr=False)
    until: float

    @property
    def alive(self) -> bool:
        return self.until > time.time()


@dataclass(frozen=True)
class Job:
    id: str
    kind: JobKind
    parent_task_id: str | None
    image_index: int | None
    upstream_task_id: str | None
    requester_id: int
    guild_id: int | None
    channel_id: int
    grid_message_id: int | None
    status_message_id: int | None
    result_message_id: int | None
    callback_secret: str = field(repr=False)
    state: JobState
    error: str | None
    result_urls: tuple[str, ...]
    prompt: str | None
    options: dict[str, str]
    created_at: float
    updated_at: float
    deadline_at: float
    completed_at: float | None
    delivered_at: float | None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def label(self) -> str:
        """job and task ids for log lines."""
        return f"job={self.id} task={self.upstream_task_id or '-'}"

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Job:
        values = dict(row._mapping)
        # The store's business alone (bot.jobs.dedupe).
        values.pop("dedupe_key", None)
        values["kind"] = JobKind(values["kind"])
        values["state"] = JobState(values["state"])
        values["result_urls"] = tuple(json.loads(values["result_urls"] or "[]"))
        values["options"] = json.loads(values["options"] or "{}")
        return cls(**values)


class DuplicateJob(Exception):
    """The same button's job is live already (an upscale) or still running (V<n>, 🔄)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"a live {job.kind} of that grid exists: {job.label}")


@dataclass(frozen=True)
class GridUse:
    """What has been asked of one grid's buttons (failed jobs aside): shown green."""

    upscaled: frozenset[int] = frozenset()
    varied: frozenset[int] = frozenset()
    rerolled: bool = False


def async_database_url(url: str) -> str:
    """The operator writes plain ``sqlite:///`` or ``postgresql://``; pick the async drivers."""
    scheme, rest = url.split("://", 1)
    driver = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
    }.get(scheme.lower(), scheme)
    return f"{driver}://{rest}"


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite") or ":memory:" in url:
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return Path(path) if path else None


class StoreUnavailable(Exception):
    """The database named by DATABASE_URL cannot be opened. The message is the reason in plain
    words, without the URL (the caller names it, its password hidden)."""


def _reason(exc: BaseException, url: str) -> str:
    """Why opening the database failed, in one line. SQLAlchemy wraps the driver's error, which
    in turn may wrap asyncpg's: the innermost one says it best."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    address = _address(url)
    if isinstance(exc, socket.gaierror):
        return f"unknown host {address.rsplit(':', 1)[0]} ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing answers at {address} (connection refused): is PostgreSQL running there?"
    if isinstance(exc, TimeoutError):
        return f"no answer from {address} in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.strerror}: {exc.filename}"
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, sqlite3.Error):
        return f"{text} (SQLite file {_sqlite_path(url)})"
    return text


def _address(url: str) -> str:
    parts = sa.engine.make_url(url)
    return f"{parts.host or 'localhost'}:{parts.port or 5432}"


class JobStore:
    def __init__(self, engine: AsyncEngine, *, lease_engine: AsyncEngine | None = None) -> None:
        self._engine = engine
        # Leases must not queue behind a burst of clicks for a pooled connection: one renewed
        # late is lost (a shard's session closed, a job handed over) under exactly the load
        # that needs it. On PostgreSQL they have connections of their own.
        self._lease_engine = lease_engine or engine
        self.ledger = Ledger(engine)
        # Counted inserts take turns under advisory locks (every one of them under the budget's
        # when there is one), each waiting on a pooled connection: a storm of them would leave
        # none for the writes that must not wait (a paid task's id). They queue here instead.
        self._admitting = asyncio.Semaphore(ADMITTING_CONNECTIONS)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def shared(self) -> bool:
        """Whether several processes may share this store (PostgreSQL; SQLite is one's own)."""
        return self._engine.dialect.name == "postgresql"

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        sqlite_busy_seconds: float = SQLITE_BUSY_SECONDS,
        migrate: bool = True,
    ) -> JobStore:
        """Open the database and bring its schema to head (bot.jobs.migrations); with
        ``migrate`` false, only see that it answers."""
        url = async_database_url(database_url)
        connect_args: dict[str, Any] = {}
        path = _sqlite_path(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the folder {path.parent} for the SQLite file: {exc.strerror}"
                ) from exc
            connect_args["timeout"] = sqlite_busy_seconds
        # hide_parameters: a failed statement's error names its values, callback secrets among
        # them, and such errors reach the log.
        engine = create_async_engine(
            url,
            connect_args=connect_args,
            hide_parameters=True,
            # A PostgreSQL server restarted (or a proxy that dropped idle connections) leaves
            # dead connections in the pool: each is tried before it is handed out.
            pool_pre_ping=not url.startswith("sqlite"),
        )
        lease_engine = None
        if url.startswith("sqlite"):
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            lease_engine = create_async_engine(
                url,
                hide_parameters=True,
                pool_pre_ping=True,
                pool_size=2,
                max_overflow=2,
                # A renewal that hangs on a dead link must fail soon: the keeper tries again.
                connect_args={
                    "timeout": LEASE_QUERY_SECONDS,
                    "command_timeout": LEASE_QUERY_SECONDS,
                },
            )
        try:
            if migrate:
                await migrations.upgrade(engine)
            else:
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
        except BaseException as exc:
            await engine.dispose()
            if lease_engine is not None:
                await lease_engine.dispose()
            # The driver's refusals (a wrong password, no such database, not a SQLite file) come
            # wrapped by SQLAlchemy; an unreachable or unknown host comes as a bare OSError.
            if isinstance(exc, OSError | SQLAlchemyError):
                raise StoreUnavailable(_reason(exc, url)) from exc
            raise
        return cls(engine, lease_engine=lease_engine)

    async def close(self) -> None:
        await self._engine.dispose()
        if self._lease_engine is not self._engine:
            await self._lease_engine.dispose()

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def create(
        self,
        *,
        kind: JobKind,
        requester_id: int,
        guild_id: int | None,
        channel_id: int,
        deadline_seconds: float,
        parent_task_id: str | None = None,
        image_index: int | None = None,
        grid_message_id: int | None = None,
        status_message_id: int | None = None,
        prompt: str | None = None,
        options: dict[str, str] | None = None,
        max_unfinished: int | None = None,
        quota: Quota | None = None,
        callback_secret: str | None = None,
        lease: tuple[str, float] | None = None,
        follow_up: FollowUp | None = None,
    ) -> Job:
        """Insert a job in state ``requested``, with a random callback secret unless given.

        A second live upscale of the same image, or a second running variation of it (re-roll
        of the grid), raises DuplicateJob; with
        ``max_unfinished``, a requester who has that many unfinished jobs gets TooManyJobs; with
        ``quota``, a job that would pass a daily limit gets OverQuota, and one that is stored
        counts against it in the same transaction.
        """
        now = time.time()
        job_id = secrets.token_hex(12)
        values = {
            "id": job_id,
            "kind": kind.value,
            "parent_task_id": parent_task_id,
            "image_index": image_index,
            "upstream_task_id": None,
            "requester_id": requester_id,
            "guild_id": guild_id,
            "channel_id": channel_id,
            "grid_message_id": grid_message_id,
            "status_message_id": status_message_id,
            "result_message_id": None,
            "callback_secret": callback_secret or secrets.token_urlsafe(24),
            "state": JobState.REQUESTED.value,
            "error": None,
            "result_urls": "[]",
            "prompt": prompt,
            "options": json.dumps(options or {}),
            "created_at": now,
            "updated_at": now,
            "deadline_at": now + deadline_seconds,
            "completed_at": None,
            "delivered_at": None,
            "dedupe_key": dedupe_key(kind, parent_task_id, image_index),
        }
        admitted = admission(values, max_unfinished, quota)
        insert = jobs.insert()
        if admitted is not None:
            row = sa.select(*(sa.literal(v, type_=jobs.c[k].type) for k, v in values.items()))
            insert = insert.from_select(list(values), row.where(admitted))
        else:
            insert = insert.values(**values)
        gate: contextlib.AbstractAsyncContextManager[Any] = (
            self._admitting if admitted is not None else contextlib.nullcontext()
        )
        for _ in range(5):
            try:
                async with gate, self._engine.begin() as conn:
                    if admitted is not None and conn.dialect.name == "postgresql":
                        # Under READ COMMITTED two inserts would each miss the other's row in
                        # their counts; a lock per thing counted makes them take turns, taken
                        # in one order so that two requests never wait on each other. (SQLite
                        # runs one writer at a time already.)
                        for key in lock_keys(requester_id, guild_id, quota):
                            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
                    if (await conn.execute(insert)).rowcount != 1:
                        refused = await refusal(conn, values, max_unfinished, quota)
                        raise refused or RuntimeError("the insert was refused by no limit")
                    if lease is not None:
                        # Leased in the same step: no other process ever sees it as nobody's.
                        owner, ttl = lease
                        await conn.execute(_lease_row(job_id, owner, self._clock() + ttl))
                    if follow_up is not None:
                        await conn.execute(
                            follow_ups.insert().values(
                                job_id=job_id,
                                application_id=follow_up.application_id,
                                token=follow_up.token,
                                until=follow_up.until,
                            )
                        )
                    if quota is not None:
                        await conn.execute(
                            allowance_uses.insert().values(
                                job_id=job_id,
                                guild_id=guild_id,
                                requester_id=requester_id,
                                category=quota.category,
                                at=now,
                            )
                        )
                return await self._require(job_id)
            except IntegrityError:
                if values["dedupe_key"] is None:
                    raise
                existing = await self.live_twin(kind, parent_task_id or "", image_index)
                if existing is not None:
                    raise DuplicateJob(existing) from None
                # The live one finished between our insert and the look-up: try again.
        raise RuntimeError("could not insert the job after repeated conflicts")

    async def refusal(
        self,
        *,
        requester_id: int,
        guild_id: int | None,
        max_unfinished: int | None,
        quota: Quota | None,
    ) -> TooManyJobs | OverQuota | None:
        """What ``create`` would refuse a job with for its limits right now (TooManyJobs,
        OverQuota), or None: a preview only, since other requests may come in between."""
        values = {"requester_id": requester_id, "guild_id": guild_id}
        async with self._engine.connect() as conn:
            return await refusal(conn, values, max_unfinished, quota)

    async def get(self, job_id: str) -> Job | None:
        return await self._one(jobs.c.id == job_id)

    async def by_secret(self, secret: str) -> Job | None:
        return await self._one(jobs.c.callback_secret == secret)

    async def by_upstream(self, task_id: str) -> Job | None:
        return await self._one(jobs.c.upstream_task_id == task_id)

    async def live_upscale(self, parent_task_id: str, image_index: int) -> Job | None:
        return await self.live_twin(JobKind.UPSCALE, parent_task_id, image_index)

    async def live_twin(
        self, kind: JobKind, parent_task_id: str, image_index: int | None
    ) -> Job | None:
        """The job that makes a new ``kind`` job of that grid (and image) a duplicate."""
        key = dedupe_key(kind, parent_task_id, image_index)
        if key is None:
            raise ValueError(f"{kind} jobs are not deduplicated")
        return await self._one(jobs.c.dedupe_key == key)

    async def grid_use(self, parent_task_id: str, guild_id: int | None) -> GridUse:
        """Which buttons of a grid have a job in this server that did not fail (another
        server's jobs of a grid made outside the bot are not this server's to see)."""
        place = jobs.c.guild_id.is_(None) if guild_id is None else jobs.c.guild_id == guild_id
        query = sa.select(jobs.c.kind, jobs.c.image_index).where(
            jobs.c.parent_task_id == parent_task_id,
            place,
            jobs.c.kind.in_([k.value for k in GRID_BUTTON_KINDS]),
            jobs.c.state != JobState.FAILED.value,
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()

        def images(kind: JobKind) -> frozenset[int]:
            return frozenset(int(index) for k, index in rows if k == kind.value)

        return GridUse(
            upscaled=images(JobKind.UPSCALE),
            varied=images(JobKind.VARY),
            rerolled=any(k == JobKind.REROLL.value for k, _ in rows),
        )

    async def api_fact(self, name: str) -> str | None:
        async with self._engine.connect() as conn:
            query = sa.select(api_facts.c.value).where(api_facts.c.name == name)
            return (await conn.execute(query)).scalar_one_or_none()

    async def learn_api_fact(self, name: str, value: str) -> str:
        """Record ``value`` unless a fact of that name is known already; the fact as stored
        (the first process to learn it wins, so every process goes by one value)."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    api_facts.insert().values(name=name, value=value, learned_at=time.time())
                )
        except IntegrityError:
            pass
        known = await self.api_fact(name)
        assert known is not None
        return known

    async def unfinished(self, ids: Collection[str] | None = None) -> list[Job]:
        """Jobs neither delivered nor failed, oldest first; with ``ids``, only those."""
        query = (
            jobs.select()
            .where(jobs.c.state.in_([s.value for s in UNFINISHED_STATES]))
            .order_by(jobs.c.created_at)
        )
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return [Job.from_row(row) for row in rows]

    async def unfinished_keys(self, ids: Collection[str] | None = None) -> list[tuple[str, str]]:
        """(id, callback secret) of the jobs ``unfinished`` would give: enough to tell which
        need a look, without reading and building every row (the sweep's query)."""
        query = sa.select(jobs.c.id, jobs.c.callback_secret).where(
            jobs.c.state.in_([s.value for s in UNFINISHED_STATES])
        )
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.order_by(jobs.c.created_at))).fetchall()
        return [(str(job_id), str(secret)) for job_id, secret in rows]

    async def count_unfinished(self) -> int:
        """Jobs neither delivered nor failed, of every process sharing the store: one COUNT
        over the state index (the health check's query)."""
        query = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.state.in_([s.value for s in UNFINISHED_STATES]))
        )
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def count_by_kind_and_state(self) -> dict[tuple[str, str], int]:
        """How many jobs there are of each (kind, state), in one GROUP BY: every known kind and
        state is present (0 when none), plus any other the table holds (a newer version's)."""
        query = sa.select(jobs.c.kind, jobs.c.state, sa.func.count()).group_by(
            jobs.c.kind, jobs.c.state
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        counts = {(kind.value, state.value): 0 for kind in JobKind for state in JobState}
        for kind, state, count in rows:
            counts[(str(kind), str(state))] = int(count)
        return counts

    async def states_since(self, since: float, guild_id: int | None = None) -> dict[JobState, int]:
        """How many jobs created since ``since`` (in server ``guild_id``, or anywhere) are in
        each state."""
        query = (
            sa.select(jobs.c.state, sa.func.count())
            .where(jobs.c.created_at >= since, *_in_guild(guild_id))
            .group_by(jobs.c.state)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return {JobState(state): count for state, count in rows}

    async def recent_failures(self, limit: int, guild_id: int | None = None) -> list[Job]:
        """The last ``limit`` failed jobs (of server ``guild_id``, or anywhere), newest first."""
        query = (
            jobs.select()
            .where(jobs.c.state == JobState.FAILED.value, *_in_guild(guild_id))
            .order_by(jobs.c.updated_at.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return [Job.from_row(row) for row in rows]

    async def transition(
        self,
        job_id: str,
        from_states: tuple[JobState, ...],
        to_state: JobState,
        *,
        give_back: bool = False,
        paid: bool = False,
        **fields: Any,
    ) -> Job | None:
        """Move the job to ``to_state`` if it is in one of ``from_states``; None if it was not.

        ``give_back`` returns the job's use of the daily allowances in the same step; ``paid``
        notes when the API took it (for the credit budget's reckoning).
        """
        values = _encode(fields)
        values["state"] = to_state.value
        values["updated_at"] = time.time()
        released = released_kinds(to_state)
        if released:
            # The job stops blocking a twin (bot.jobs.dedupe): its key is given back.
            values["dedupe_key"] = sa.case(
                (jobs.c.kind.in_([k.value for k in released]), sa.null()),
                else_=jobs.c.dedupe_key,
            )
        query = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.state.in_([s.value for s in from_states]))
            .values(**values)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(query)
            use = allowance_uses.c.job_id == job_id
            if result.rowcount == 1 and give_back:
                await conn.execute(allowance_uses.delete().where(use))
            elif result.rowcount == 1 and paid:
                stamp = allowance_uses.update().where(use, allowance_uses.c.paid_at.is_(None))
                await conn.execute(stamp.values(paid_at=values["updated_at"]))
            if result.rowcount == 1 and to_state in FINAL_STATES:
                await conn.execute(follow_ups.delete().where(follow_ups.c.job_id == job_id))
        if result.rowcount != 1:
            return None
        return await self._require(job_id)

    async def taken_at(self, job_id: str) -> float | None:
        """When the API was known to have taken the job's paid request (its use's ``paid_at``);
        None before, or for a job that counts against nothing."""
        query = sa.select(allowance_uses.c.paid_at).where(allowance_uses.c.job_id == job_id)
        async with self._engine.connect() as conn:
            taken = (await conn.execute(query)).scalar_one_or_none()
        return None if taken is None else float(taken)

    async def update(self, job_id: str, **fields: Any) -> Job:
        """Change fields that are not the state (message ids, for instance)."""
        values = _encode(fields)
        values["updated_at"] = time.time()
        async with self._engine.begin() as conn:
            await conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
        return await self._require(job_id)

    async def follow_up(self, job_id: str) -> FollowUp | None:
        """The job's way back to its requester, while it lives (the job is unfinished)."""
        query = sa.select(follow_ups).where(
            follow_ups.c.job_id == job_id, follow_ups.c.until > time.time()
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else FollowUp(row.application_id, row.token, row.until)

    async def sweep_follow_ups(self) -> int:
        """Delete the follow-ups whose interaction has expired (a job that outlived its
        click's 15 minutes keeps a dead token otherwise); how many."""
        query = follow_ups.delete().where(follow_ups.c.until <= time.time())
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount

    def _clock(self) -> sa.ColumnElement[float]:
        """Now, in Unix seconds, by the clock every process agrees on: the database's on
        PostgreSQL (hosts' clocks drift apart), this process's on SQLite (one process)."""
        if self.shared:
            return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)
        return sa.literal(time.time(), type_=sa.Float)

    async def claim_lease(self, name: str, owner: str, *, ttl: float) -> bool:
        """Lease ``name`` (a job id, a shard) to ``owner`` for ``ttl`` seconds: True unless
        another owner holds a lease on it that has not run out. Conditional UPDATE, else an
        INSERT the primary key lets only one racer make."""
        now = self._clock()
        take = (
            leases.update()
            .where(
                leases.c.name == name,
                sa.or_(leases.c.owner == owner, leases.c.until < now),
            )
            .values(owner=owner, until=now + ttl)
        )
        async with self._lease_engine.begin() as conn:
            if (await conn.execute(take)).rowcount == 1:
                return True
        try:
            async with self._lease_engine.begin() as conn:
                await conn.execute(_lease_row(name, owner, now + ttl))
        except IntegrityError:
            return False
        return True

    async def renew_leases(self, owner: str, names: Collection[str], *, ttl: float) -> set[str]:
        """Extend ``owner``'s leases on ``names``; the ones it still holds."""
        if not names:
            return set()
        mine = sa.and_(leases.c.owner == owner, leases.c.name.in_(list(names)))
        async with self._lease_engine.begin() as conn:
            await conn.execute(leases.update().where(mine).values(until=self._clock() + ttl))
            held = await conn.execute(sa.select(leases.c.name).where(mine))
            return {str(row[0]) for row in held.fetchall()}

    async def release_leases(self, owner: str, names: Collection[str]) -> None:
        if not names:
            return
        async with self._lease_engine.begin() as conn:
            await conn.execute(
                leases.delete().where(leases.c.owner == owner, leases.c.name.in_(list(names)))
            )

    async def live_leases(self, prefix: str) -> dict[str, str]:
        """Every lease whose name starts with ``prefix`` and has not run out: name → owner."""
        query = sa.select(leases.c.name, leases.c.owner).where(
            leases.c.name.startswith(prefix, autoescape=True), leases.c.until >= self._clock()
        )
        async with self._lease_engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return {str(row[0]): str(row[1]) for row in rows}

    async def orphans(self) -> list[Job]:
        """Unfinished jobs no process holds a live lease on, oldest first."""
        query = (
            jobs.select()
            .select_from(jobs.outerjoin(leases, leases.c.name == jobs.c.id))
            .where(
                jobs.c.state.in_([s.value for s in UNFINISHED_STATES]),
                sa.or_(leases.c.name.is_(None), leases.c.until < self._clock()),
            )
            .order_by(jobs.c.created_at)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return [Job.from_row(row) for row in rows]

    async def listen_jobs(self, on_job: Callable[[str], None]) -> JobListener:
        """Call ``on_job(job_id)`` for every notify_job of any process (PostgreSQL's LISTEN, on
        a connection of its own, out of the pool)."""
        conn = await self._engine.connect()
        try:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection

            def heard(_connection: object, _pid: int, _channel: str, payload: str) -> None:
                on_job(payload)

            await driver.add_listener(JOB_CHANNEL, heard)
        except BaseException:
            await conn.close()
            raise
        return JobListener(conn, driver)

    async def notify_job(self, job_id: str) -> None:
        """Tell every process listening (PostgreSQL's NOTIFY) that ``job_id`` has news."""
        async with self._engine.begin() as conn:
            await conn.execute(sa.select(sa.func.pg_notify(JOB_CHANNEL, job_id)))

    async def claim_notice(self, name: str, *, now: float, every: float) -> bool:
        """True for the one caller that may send notice ``name`` at ``now``: the first ever, or
        the first once ``every`` seconds have passed since the last claim, across processes.

        A conditional UPDATE, else an INSERT the primary key lets only one racer make, so two
        replicas asking at once get one True between them.
        """
        renew = (
            notices.update()
            .where(notices.c.name == name, notices.c.sent_at <= now - every)
            .values(sent_at=now)
        )
        async with self._engine.begin() as conn:
            if (await conn.execute(renew)).rowcount == 1:
                return True
        try:
            async with self._engine.begin() as conn:
                await conn.execute(notices.insert().values(name=name, sent_at=now))
        except IntegrityError:
            return False
        return True

    async def release_notice(self, name: str, *, claimed_at: float) -> None:
        """Give back the claim made at ``claimed_at`` (its notice could not be sent), so that
        the next claim succeeds; a claim another process made since is left alone."""
        query = (
            notices.update()
            .where(notices.c.name == name, notices.c.sent_at == claimed_at)
            .values(sent_at=0.0)
        )
        async with self._engine.begin() as conn:
            await conn.execute(query)

    async def _one(self, *conditions: sa.ColumnElement[bool]) -> Job | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(jobs.select().where(*conditions).limit(1))).first()
        return Job.from_row(row) if row is not None else None

    async def _require(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise LookupError(f"job {job_id} vanished")
        return job


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    values = dict(fields)
    if "result_urls" in values:
        values["result_urls"] = json.dumps(list(values["result_urls"]))
    if "options" in values:
        values["options"] = json.dumps(values["options"])
    if "state" in values:
        raise ValueError("change the state through transition()")
    return values


class JobListener:
    """A LISTEN of listen_jobs: whether its connection still stands, and how to end it."""

    def __init__(self, conn: AsyncConnection, driver: Any) -> None:
        self._conn = conn
        self._driver = driver

    @property
    def lost(self) -> bool:
        return bool(self._driver.is_closed())

    async def stop(self) -> None:
        # Never back to the pool: it may be dead, and a live one would still be listening.
        with contextlib.suppress(Exception):
            await self._conn.invalidate()
        with contextlib.suppress(Exception):
            await self._conn.close()


def _lease_row(name: str, owner: str, until: sa.ColumnElement[float]) -> sa.Insert:
    return leases.insert().from_select(
        ["name", "owner", "until"],
        sa.select(sa.literal(name), sa.literal(owner), until),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the listener read while a delivery writes; NORMAL sync is safe with WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _in_guild(guild_id: int | None) -> tuple[sa.ColumnElement[bool], ...]:
    return () if guild_id is None else (jobs.c.guild_id == guild_id,)
