"""The Bot: builds store, API client, tracker and listener in setup_hook; closes them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from urllib.parse import urlsplit

import aiohttp
import discord
from discord.ext import commands

from bot.config import Settings, redact_url
from bot.credits import CreditWatch
from bot.delivery.fetch import ImageFetcher
from bot.delivery.publisher import DiscordPublisher
from bot.health import HealthMonitor
from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.store import JobStore
from bot.jobs.throttle import SubmitThrottle
from bot.jobs.tracker import SUBMIT_WINDOW_SECONDS, Tracker
from bot.jobs.types import CALLBACK_PATH, PollPolicy
from bot.metrics import Metrics
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.sandbox import SandboxAPI
from bot.selfcheck import SelfCheck
from bot.web import Listener

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.upscale", "cogs.imagine", "cogs.admin")
SANDBOX_PREFIX = "/sandbox"
SANDBOX_KEY = "sandbox"
# How long a shutdown waits for paid calls and posts under way. `docker stop` and many hosts send
# SIGKILL 10 s after SIGTERM; the store and listener still have to close within that. Whatever is
# cut off resumes at the next start.
SHUTDOWN_GRACE_SECONDS = 8.0


class UpscaleBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        *,
        poll: PollPolicy | None = None,
        sandbox: SandboxAPI | None = None,
        guild_ready_timeout: float = 2.0,
        health: HealthMonitor | None = None,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=guild_ready_timeout,
        )
        self.settings = settings
        self._poll = poll
        self.sandbox = sandbox
        # None unless METRICS_ENABLED: nothing is recorded and /metrics does not exist.
        self.metrics = Metrics() if settings.metrics_enabled else None
        self.listener = Listener(hmac_key=settings.webhook_hmac_key, metrics=self.metrics)
        # GET /healthz; tests pass a monitor with their own clock and limits.
        self.health = health or HealthMonitor()
        self.listener.health = self.health
        self.add_listener(self._gateway_up, "on_connect")
        self.add_listener(self._gateway_up, "on_resumed")
        self.add_listener(self._gateway_down, "on_disconnect")
        self._store: JobStore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tracker: Tracker | None = None
        self._credit_watch: CreditWatch | None = None
        self._mj: MidjourneyClient | None = None
        self._publisher: DiscordPublisher | None = None
        self.listen_port: int | None = None
        self._callback_base: str | None = None
        self.selfcheck = SelfCheck(self.listener.app)
        self._selfcheck_task: asyncio.Task[bool] | None = None
        self._shutdown: asyncio.Task[None] | None = None

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            raise RuntimeError("the bot is not set up yet")
        return self._tracker

    @property
    def mj(self) -> MidjourneyClient:
        if self._mj is None:
            raise RuntimeError("the bot is not set up yet")
        return self._mj

    @property
    def publisher(self) -> DiscordPublisher:
        if self._publisher is None:
            raise RuntimeError("the bot is not set up yet")
        return self._publisher

    @property
    def credit_watch(self) -> CreditWatch:
        if self._credit_watch is None:
            raise RuntimeError("the bot is not set up yet")
        return self._credit_watch

    async def setup_hook(self) -> None:
        settings = self.settings
        self._store = await JobStore.open(settings.database_url)
        log.info("job store open at %s", redact_url(settings.database_url))
        self.health.watch_store(self._store.count_unfinished)
        self._session = aiohttp.ClientSession()

        if settings.sandbox and self.sandbox is None:
            self.sandbox = SandboxAPI()
        if settings.sandbox and self.sandbox is not None:
            self.listener.app.add_subapp(SANDBOX_PREFIX, self.sandbox.app)
        self.listen_port = await self.listener.start(settings.host, settings.port)

        local = f"http://127.0.0.1:{self.listen_port}"
        if settings.sandbox:
            api_base, api_key = local + SANDBOX_PREFIX, settings.mj_api_key or SANDBOX_KEY
            log.info("sandbox API served at %s: no credits are spent", api_base)
        else:
            api_base, api_key = settings.mj_api_base_url, settings.mj_api_key or ""
        # In sandbox mode without a public URL the sandbox calls back to this listener directly.
        callback_base = settings.public_url or (local if settings.sandbox else None)
        self._callback_base = callback_base

        self._mj = MidjourneyClient(self._session, api_base, api_key, metrics=self.metrics)
        trusted = (*settings.result_hosts, urlsplit(api_base).hostname or "")
        fetcher = ImageFetcher(trusted)
        self._publisher = DiscordPublisher(self, self._store, fetcher)
        self._credit_watch = CreditWatch(
            self._mj,
            self._store,
            # Without an admin channel the warning goes to the log.
            None
            if settings.admin_channel_id is None
            else functools.partial(self._publisher.post_notice, settings.admin_channel_id),
            threshold=settings.low_credit_threshold,
        )
        self._mj.on_refusal = self._credit_watch.api_refused
        self._tracker = Tracker(
            self._store,
            self._mj,
            self._publisher,
            callback_secrets=CallbackSecrets.from_token(settings.discord_token),
            callback_base=callback_base,
            deadline_seconds=settings.job_timeout_seconds,
            watermark=settings.watermark,
            poll=self._poll,
            throttle=SubmitThrottle(
                settings.submit_rate, SUBMIT_WINDOW_SECONDS, max_waiting=settings.queue_limit
            ),
            max_jobs_per_user=settings.max_jobs_per_user,
            metrics=self.metrics,
            on_submitted=self._credit_watch.submitted,
        )
        self.listener.tracker = self._tracker
        if callback_base:
            log.info(
                "listening on %s:%s; callbacks expected at %s%s<secret>",
                settings.host,
                self.listen_port,
                callback_base,
                CALLBACK_PATH,
            )
        else:
            log.info(
                "listening on %s:%s; PUBLIC_URL is unset, so no callbacks can arrive: "
                "jobs are completed by polling the API",
                settings.host,
                self.listen_port,
            )

        if self.metrics is not None:
            log.info("metrics served at /metrics on port %s", self.listen_port)
        if settings.public_url:
            # In the background: a public URL that hangs must not hold up the start.
            self._selfcheck_task = asyncio.create_task(
                self.selfcheck.run(self._session, settings.public_url), name="selfcheck"
            )
        # In the background too: its first reading must not hold up the start either.
        self._credit_watch.start()

        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self._sync_commands()
        # What exists now (modules, discord.py, SQLAlchemy: ~100,000 objects) lives as long as the
        # process. Frozen, it is left out of every full collection, whose pauses otherwise stop
        # the event loop for 40–140 ms and hold up acknowledgements (docs/performance.md).
        gc.collect()
        gc.freeze()
        resumed = await self._tracker.recover()
        if resumed:
            log.info("resumed %d unfinished job(s)", resumed)

    def callbacks_summary(self) -> str:
        """How results reach the bot, in a line for admins."""
        if self._callback_base is None:
            return "off: PUBLIC_URL is unset, so jobs are finished by polling the API"
        last = self.listener.last_callback_at
        heard = f"last one received <t:{int(last)}:R>" if last else "none received yet"
        if self.settings.public_url and self.selfcheck.reachable is False:
            return (
                f"{self.settings.public_url} does not reach the bot ({self.selfcheck.detail}); "
                f"jobs are finished by polling; {heard}"
            )
        return f"expected at {self._callback_base}; {heard}; late ones are covered by polling"

    async def _sync_commands(self) -> None:
        guild_id = self.settings.guild_id
        if guild_id is not None:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d slash command(s) to server %s", len(synced), guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d slash command(s) globally (may take up to an hour)", len(synced))

    async def _gateway_up(self) -> None:
        self.health.gateway_up()

    async def _gateway_down(self) -> None:
        self.health.gateway_down()

    async def on_ready(self) -> None:
        user = self.user
        log.info(
            "connected to Discord as %s (%s) in %d server(s)",
            user,
            user.id if user else "?",
            len(self.guilds),
        )

    async def close(self) -> None:
        """Stop taking work, let deliveries under way finish (bounded), then close everything.

        A second call (a second signal, discord.py's own exit path) joins the shutdown under way
        rather than closing the store under a delivery that is still draining.
        """
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._shut_down(), name="shutdown")
        await self._shutdown

    async def _shut_down(self) -> None:
        if self._tracker is not None:
            log.info(
                "shutting down: no new jobs; waiting up to %g s for work under way",
                SHUTDOWN_GRACE_SECONDS,
            )
            await self._tracker.close(grace=SHUTDOWN_GRACE_SECONDS)
        if self._selfcheck_task is not None:
            self._selfcheck_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._selfcheck_task
        if self._credit_watch is not None:
            # Before the session and the store it reads and writes are closed.
            await self._credit_watch.close()
        # Closed only after the drain: a callback arriving meanwhile is still recorded.
        await self.listener.close()
        if self.sandbox is not None:
            await self.sandbox.close()
        if self._publisher is not None:
            await self._publisher.close()
        if self._session is not None:
            await self._session.close()
        if self._store is not None:
            await self._store.close()
        # The freeze is process-wide: a bot closed inside a longer-lived process (the tests)
        # leaves that process's collector as it found it.
        gc.unfreeze()
        await super().close()
