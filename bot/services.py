"""Everything the bot runs besides the Discord gateway, built from the settings.

``open_services`` builds the parts in dependency order and ``Services.close`` takes them down in
the reverse one. The Discord client comes in from outside: the publisher posts through its REST
side, and nothing else here knows discord.py. The cogs are then built from these services
(cogs.add_cogs), each with exactly the parts it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import discord

from bot import status
from bot.config import Settings
from bot.credits import CreditWatch
from bot.delivery.attachments import DISCORD_ATTACHMENT_HOSTS, MB, AttachmentChecker
from bot.delivery.fetch import ImageFetcher
from bot.delivery.pool import ImagePool
from bot.delivery.publisher import DiscordPublisher
from bot.health import HealthMonitor
from bot.jobs.allowances import by_option
from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.coordination import Coordination
from bot.jobs.database import Database
from bot.jobs.leases import LEASE_SECONDS, new_owner
from bot.jobs.pace import SharedPace
from bot.jobs.server_settings import ServerSettings
from bot.jobs.servers import Servers
from bot.jobs.spending import Rules, Spending
from bot.jobs.stats import JobStats
from bot.jobs.store import JobStore
from bot.jobs.throttle import SUBMIT_WINDOW_SECONDS, Pace, SubmitThrottle
from bot.jobs.tracker import Tracker
from bot.jobs.types import CALLBACK_PATH, PollPolicy, TrackerSettings
from bot.metrics import Metrics
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.sandbox import SandboxAPI
from bot.redaction import redact_url
from bot.selfcheck import SelfCheck
from bot.web import Listener

log = logging.getLogger(__name__)

SANDBOX_PREFIX = "/sandbox"
# How long a shutdown waits for paid calls and posts under way. `docker stop` and many hosts send
# SIGKILL 10 s after SIGTERM; the store and listener still have to close within that. Whatever is
# cut off resumes at the next start.
SHUTDOWN_GRACE_SECONDS = 8.0


@dataclass
class Services:
    settings: Settings
    database: Database
    store: JobStore
    stats: JobStats
    coordination: Coordination
    session: aiohttp.ClientSession
    listener: Listener
    listen_port: int
    mj: MidjourneyClient
    publisher: DiscordPublisher
    credit_watch: CreditWatch
    spending: Spending
    server_settings: ServerSettings
    tracker: Tracker
    health: HealthMonitor
    selfcheck: SelfCheck
    # None unless METRICS_ENABLED: nothing is recorded and /metrics does not exist.
    metrics: Metrics | None
    sandbox: SandboxAPI | None
    # The images attached to /imagine, downloaded from Discord and checked.
    attachments: AttachmentChecker
    # Where the API is told to call back; None when only polling can finish jobs.
    callback_base: str | None
    _cleanup: contextlib.AsyncExitStack = field(repr=False)
    _closing: asyncio.Task[None] | None = field(default=None, repr=False)

    async def resume(self) -> int:
        """Once Discord has accepted the token: resume every unfinished job; how many."""
        # What exists now (modules, discord.py, SQLAlchemy: ~100,000 objects) lives as long as the
        # process. Frozen, it is left out of every full collection, whose pauses otherwise stop
        # the event loop for 40–140 ms and hold up acknowledgements (docs/performance.md).
        gc.collect()
        gc.freeze()
        resumed = await self.tracker.recover()
        if resumed:
            log.info("resumed %d unfinished job(s)", resumed)
        return resumed

    async def close(self) -> None:
        """Stop taking work, let paid calls and posts under way finish (bounded), then close
        every part. Call it while Discord is still reachable: the drain may post.

        A second call (a second signal) joins the shutdown under way rather than closing the
        store under a delivery that is still draining.
        """
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name="shutdown")
        await self._closing

    async def _close(self) -> None:
        log.info(
            "shutting down: no new jobs; waiting up to %g s for work under way",
            SHUTDOWN_GRACE_SECONDS,
        )
        await self.tracker.close(grace=SHUTDOWN_GRACE_SECONDS)
        await self._cleanup.aclose()
        # The freeze is process-wide: services closed inside a longer-lived process (the tests)
        # leave that process's collector as they found it.
        gc.unfreeze()

    def callbacks_summary(self) -> str:
        """How results reach the bot, in a line for admins."""
        if self.callback_base is None:
            return "off: PUBLIC_URL is unset, so jobs are finished by polling the API"
        last = self.listener.last_callback_at
        heard = f"last one received <t:{int(last)}:R>" if last else "none received yet"
        public_url = self.settings.public_url
        if public_url and self.selfcheck.reachable is False:
            return (
                f"{public_url} does not reach the bot ({self.selfcheck.detail}); "
                f"jobs are finished by polling; {heard}"
            )
        return f"expected at {self.callback_base}; {heard}; late ones are covered by polling"

    async def status_report(
        self, guild_id: int | None, server_names: dict[int, str] | None = None
    ) -> str:
        """What /mj status shows: to a server's admin, that server (``guild_id``); to owners
        (None), everything, with a line for each server in ``server_names`` (id → name)."""
        if guild_id is not None:
            report = await status.status_report(
                self.stats,
                self.mj,
                guild_id=guild_id,
                callbacks="",
                spending=await self.spending.server_summary(guild_id),
                vary_index=await self.vary_index_summary(),
                videos=await self.videos_summary(),
            )
            on = await self.server_settings.translates(guild_id)
            translation = f"Translation of prompts: {'on' if on else 'off'} (/mj translation)"
            return f"{report}\n{await self.spending.server_usage(guild_id)}\n{translation}"
        return await status.status_report(
            self.stats,
            self.mj,
            guild_id=None,
            callbacks=self.callbacks_summary(),
            low_credit_threshold=self.settings.low_credit_threshold,
            spending=self.spending.summary(),
            costs=await self.spending.costs_line(),
            vary_index=await self.vary_index_summary(),
            videos=await self.videos_summary(),
            servers=await self.spending.server_lines(server_names or {}),
        )

    async def vary_index_summary(self) -> str:
        """How V1–V4 are numbered for generateVary, and who said so."""
        return await status.index_summary(
            self.tracker.vary_index,
            self.settings.vary_index_base,
            first="V1 is imageIndex",
            setting="MJ_VARY_INDEX_BASE",
            meanwhile="V1 and V4 work and teach it, V2 and V3 wait until then",
        )

    async def videos_summary(self) -> str:
        """What 🎬 asks for, and how ⏩ numbers the videos of a batch."""
        settings = self.settings
        numbering = await status.index_summary(
            self.tracker.extend_index,
            settings.extend_index_base,
            first="the first video is index",
            setting="MJ_EXTEND_INDEX_BASE",
            meanwhile="⏩ of a first video (and of a fourth of four) works and teaches it",
        )
        quality = "HD (720p)" if settings.video_quality == "hd" else "SD (480p)"
        return f"{quality}, {settings.video_batch_size} per 🎬 click; ⏩: {numbering}"


def served_by_settings(settings: Settings) -> frozenset[int]:
    """The servers the settings open the door to: ALLOWED_GUILD_IDS, and DISCORD_GUILD_ID (the
    server the operator develops in)."""
    extra = () if settings.guild_id is None else (settings.guild_id,)
    return settings.allowed_guild_ids | frozenset(extra)


async def open_services(
    settings: Settings,
    discord_client: discord.Client,
    *,
    poll: PollPolicy | None = None,
    sandbox: SandboxAPI | None = None,
    health: HealthMonitor | None = None,
) -> Services:
    """Open the store, start the listener and build the parts on top of them.

    ``poll`` and ``sandbox`` are for tests (faster polling, a sandbox they drive: it is given
    the bot's key and callback route like one made here); ``health`` lets them give the health
    check their own clock. Whatever was opened before a failure is closed again before the error
    is raised.
    """
    async with contextlib.AsyncExitStack() as cleanup:
        database = await Database.open(settings.database_url)
        cleanup.push_async_callback(database.close)
        log.info("job store open at %s", redact_url(settings.database_url))
        store, stats = JobStore(database), JobStats(database)
        coordination = Coordination(database)
        session = aiohttp.ClientSession()
        cleanup.push_async_callback(session.close)
        metrics = Metrics() if settings.metrics_enabled else None
        health = health or HealthMonitor()
        health.watch_store(stats.count_unfinished)
        listener = Listener(hmac_key=settings.webhook_hmac_key, metrics=metrics)
        listener.health = health
        # One key for every process of this bot: callback secrets and the self-check's answer.
        keys = CallbackSecrets.from_token(settings.discord_token)
        selfcheck = SelfCheck(listener.app, keys)

        if settings.sandbox:
            # Served on the public listener, the sandbox answers this bot's client only: with the
            # operator's key, or else one made now that nobody else learns (it is never logged).
            api_key = settings.mj_api_key or secrets.token_urlsafe(32)
            sandbox = sandbox or SandboxAPI()
            sandbox.api_key = api_key
            # And it calls back to this listener only, whose address is known once it is bound:
            # until then, to nowhere.
            sandbox.callback_bases = ()
            cleanup.push_async_callback(sandbox.close)
            listener.app.add_subapp(SANDBOX_PREFIX, sandbox.app)
        else:
            api_key = settings.mj_api_key or ""
            sandbox = None
        # Closed only after the drain: a callback arriving meanwhile is still recorded.
        cleanup.push_async_callback(listener.close)
        port = await listener.start(settings.host, settings.port)

        local = f"http://127.0.0.1:{port}"
        # In sandbox mode without a public URL the sandbox calls back to this listener directly.
        callback_base = settings.public_url or (local if sandbox is not None else None)
        if sandbox is not None:
            api_base = local + SANDBOX_PREFIX
            # The route the tracker names in every callBackUrl (Tracker.callback_url).
            sandbox.callback_bases = (f"{callback_base}{CALLBACK_PATH}",)
            log.info("sandbox API served at %s: no credits are spent", api_base)
        else:
            api_base = settings.mj_api_base_url

        mj = MidjourneyClient(session, api_base, api_key, metrics=metrics)
        fetcher = ImageFetcher((*settings.result_hosts, urlsplit(api_base).hostname or ""))
        # One pool and pixel budget for results and attachments: both decode images.
        pool = ImagePool()
        publisher = DiscordPublisher(discord_client, store, fetcher, pool=pool)
        cleanup.push_async_callback(publisher.close)
        # Attachments come from Discord's CDN, or from wherever the Discord API is (a test's
        # double, which discord.py is pointed at): that host is trusted with the token already.
        api_host = urlsplit(discord.http.Route.BASE).hostname or ""
        attachments = AttachmentChecker(
            ImageFetcher(
                (*DISCORD_ATTACHMENT_HOSTS, api_host),
                public_only=(*DISCORD_ATTACHMENT_HOSTS, "discord.com"),
                max_bytes=settings.image_input_max_mb * MB,
            ),
            settings.image_input_max_mb,
            pool,
        )
        cleanup.push_async_callback(attachments.close)
        spending = Spending(
            store.ledger,
            Rules(
                # Each cost category's setting, DAILY_IMAGINES_PER_USER → daily_imagines_per_user.
                **by_option(lambda c: getattr(settings, c.setting.lower())),
                server_jobs=settings.daily_jobs_per_server,
                budget=settings.daily_credit_budget,
                timezone=settings.quota_timezone,
            ),
            servers=Servers(
                store.engine,
                allowed=served_by_settings(settings),
                jobs=settings.daily_jobs_per_server,
                credits=settings.daily_credits_per_server,
            ),
        )
        credit_watch = CreditWatch(
            mj,
            coordination,
            # Without an admin channel the warning goes to the log.
            None
            if settings.admin_channel_id is None
            else functools.partial(publisher.post_notice, settings.admin_channel_id),
            threshold=settings.low_credit_threshold,
            spending=spending,
        )
        spending.on_budget_reached = credit_watch.budget_reached
        # Before the session and the store it reads and writes are closed.
        cleanup.push_async_callback(credit_watch.close)
        mj.on_refusal = credit_watch.api_refused
        local_pace = SubmitThrottle(
            settings.submit_rate, SUBMIT_WINDOW_SECONDS, max_waiting=settings.queue_limit
        )
        # Who this process is in ``leases``: its job and shard leases, and its turns of the pace,
        # which count for as long as it holds a live lease.
        owner = new_owner()
        # On PostgreSQL several processes may share the API key: the pace is counted for all.
        pace: Pace = (
            SharedPace(
                store.engine,
                local_pace,
                settings.submit_rate,
                SUBMIT_WINDOW_SECONDS,
                owner=owner,
            )
            if store.shared
            else local_pace
        )
        tracker = Tracker(
            store,
            mj,
            publisher,
            TrackerSettings(
                callback_base=callback_base,
                deadline_seconds=settings.job_timeout_seconds,
                watermark=settings.watermark,
                vary_index_base=settings.vary_index_base,
                extend_index_base=settings.extend_index_base,
                video_quality=settings.video_quality,
                video_batch=settings.video_batch_size,
                max_jobs_per_user=settings.max_jobs_per_user,
                grid_reposts_per_hour=settings.grid_reposts_per_hour,
                image_input_days=settings.image_input_days,
                poll=poll or PollPolicy(),
            ),
            callback_secrets=keys,
            throttle=pace,
            metrics=metrics,
            on_submitted=credit_watch.submitted,
            spending=spending,
            lease_seconds=LEASE_SECONDS if store.shared else None,
            lease_owner=owner,
        )
        # Watchers still running when the shutdown gives up waiting stop before anything closes.
        cleanup.push_async_callback(tracker.close)
        listener.tracker = tracker
        listener.stats = stats
        _log_callbacks(settings, port, callback_base)
        if metrics is not None:
            log.info("metrics served at /metrics on port %s", port)
        if settings.public_url:
            # In the background: a public URL that hangs must not hold up the start.
            check = asyncio.create_task(
                selfcheck.run(session, settings.public_url), name="selfcheck"
            )
            cleanup.push_async_callback(_cancel, check)
        # In the background too: its first reading must not hold up the start either.
        credit_watch.start()

        services = Services(
            settings=settings,
            database=database,
            store=store,
            stats=stats,
            coordination=coordination,
            session=session,
            listener=listener,
            listen_port=port,
            mj=mj,
            publisher=publisher,
            credit_watch=credit_watch,
            spending=spending,
            server_settings=ServerSettings(store.engine),
            tracker=tracker,
            health=health,
            selfcheck=selfcheck,
            metrics=metrics,
            sandbox=sandbox,
            attachments=attachments,
            callback_base=callback_base,
            _cleanup=cleanup.pop_all(),
        )
    return services


def _log_callbacks(settings: Settings, port: int, callback_base: str | None) -> None:
    if callback_base:
        log.info(
            "listening on %s:%s; callbacks expected at %s%s<secret>",
            settings.host,
            port,
            callback_base,
            CALLBACK_PATH,
        )
    else:
        log.info(
            "listening on %s:%s; PUBLIC_URL is unset, so no callbacks can arrive: "
            "jobs are completed by polling the API",
            settings.host,
            port,
        )


async def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
