"""The database the store and its neighbours share: the engines (a pool for the jobs, a few
connections of their own for leases), the schema brought to head as it opens
(bot.jobs.migrations), the clock every process agrees on, and why it cannot be opened.

SQLAlchemy Core keeps SQLite (the default) and PostgreSQL (several replicas) on one code path.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.jobs import migrations
from bot.jobs.loop_sqlite import LoopSQLite
from bot.jobs.sqlite_driver import OneTripDBAPI

T = TypeVar("T")

# The longest a lease query may take before it counts as failed.
LEASE_QUERY_SECONDS = 3.0
# As many as SQLAlchemy's default pool allowed at once (5 kept and 10 more), all of them kept.
SQLITE_CONNECTIONS = 15
# How long a write to SQLite waits for another connection's lock before "database is locked".
SQLITE_BUSY_SECONDS = 30.0


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
    if not url.startswith("sqlite") or ":memory:" in url or "mode=memory" in url:
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


class Database:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lease_engine: AsyncEngine | None = None,
        local: LoopSQLite | None = None,
    ) -> None:
        self._engine = engine
        # On a SQLite file the store's calls run on the event loop (bot.jobs.loop_sqlite).
        self._local = local
        # Leases must not queue behind a burst of clicks for a pooled connection: one renewed
        # late is lost (a shard's session closed, a job handed over) under exactly the load
        # that needs it. On PostgreSQL they have connections of their own.
        self._lease_engine = lease_engine or engine

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def lease_engine(self) -> AsyncEngine:
        return self._lease_engine

    @property
    def shared(self) -> bool:
        """Whether several processes may share this store (PostgreSQL; SQLite is one's own)."""
        return self._engine.dialect.name == "postgresql"

    async def read(self, fn: Callable[[sa.Connection], T], *, long: bool = False) -> T:
        """``fn`` (plain statements on a synchronous connection, no awaits) as one read: the
        same SQL on every database, run on the event loop on a SQLite file
        (bot.jobs.loop_sqlite), through the async engine (``run_sync``) elsewhere. ``fn`` may
        be run again (SQLite locked by another connection): statements only, no other effect.
        ``long``: statements whose time grows with the store (a sum over the day's jobs) run
        through the async engine anyway, so that they never hold up the loop."""
        if self._local is not None and not long:
            return await self._local.run(fn, commit=False)
        async with self._engine.connect() as conn:
            return await conn.run_sync(fn)

    async def write(self, fn: Callable[[sa.Connection], T], *, long: bool = False) -> T:
        """``fn`` as one transaction, committed when it returns, rolled back if it raises or
        its caller is cancelled first (``long`` as for ``read``)."""
        if self._local is not None and not long:
            return await self._local.run(fn, commit=True)
        async with self._engine.begin() as conn:
            return await conn.run_sync(fn)

    async def checkpoint(self) -> None:
        """On a SQLite file whose calls run on the loop, the log copied into the file by one of
        aiosqlite's threads (the loop's connection never does it: it syncs the disk)."""
        if self._local is not None:
            async with self._engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        sqlite_busy_seconds: float = SQLITE_BUSY_SECONDS,
        migrate: bool = True,
    ) -> Database:
        """Open the database and bring its schema to head (bot.jobs.migrations); with
        ``migrate`` false, only see that it answers."""
        url = async_database_url(database_url)
        connect_args: dict[str, Any] = {}
        engine_args: dict[str, Any] = {}
        path = _sqlite_path(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the folder {path.parent} for the SQLite file: {exc.strerror}"
                ) from exc
            connect_args["timeout"] = sqlite_busy_seconds
        if url.startswith("sqlite"):
            engine_args["module"] = OneTripDBAPI()
        if path is not None:
            # Kept, not closed after a burst: a SQLite connection is a thread of aiosqlite's, the
            # file opened and its pragmas, about 3 ms of CPU each time (docs/performance.md §8).
            # A database in memory has one connection, in a pool that takes no size.
            engine_args["pool_size"] = SQLITE_CONNECTIONS
            engine_args["max_overflow"] = 0
        # hide_parameters: a failed statement's error names its values, callback secrets among
        # them, and such errors reach the log.
        engine = create_async_engine(
            url,
            connect_args=connect_args,
            hide_parameters=True,
            # A PostgreSQL server restarted (or a proxy that dropped idle connections) leaves
            # dead connections in the pool: each is tried before it is handed out.
            pool_pre_ping=not url.startswith("sqlite"),
            **engine_args,
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
            if isinstance(exc, migrations.SchemaAhead):
                raise StoreUnavailable(str(exc)) from exc
            raise
        local = None
        if path is not None and await _journal_mode(engine) == "wal":
            # Without WAL (a file system that refuses it) each commit would sync the disk, and
            # a read wait for a writer: on the loop, neither.
            local = LoopSQLite(path, busy_seconds=sqlite_busy_seconds)
        return cls(engine, lease_engine=lease_engine, local=local)

    async def close(self) -> None:
        if self._local is not None:
            self._local.close()
        await self._engine.dispose()
        if self._lease_engine is not self._engine:
            await self._lease_engine.dispose()

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    def clock(self) -> sa.ColumnElement[float]:
        """Now, in Unix seconds, by the clock every process agrees on: the database's on
        PostgreSQL (hosts' clocks drift apart), this process's on SQLite (one process)."""
        if self.shared:
            return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)
        return sa.literal(time.time(), type_=sa.Float)


async def _journal_mode(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
    return str(mode).lower()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the listener read while a delivery writes; NORMAL sync is safe with WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
