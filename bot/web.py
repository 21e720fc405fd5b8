"""The aiohttp listener: the callback route the API calls, the images given to /imagine that the
API fetches (``/inputs/<token>.<ext>``), and a health check.

The callback route faces the internet. Every refusal is a quick 4xx; none of them touches the job
store, the API or Discord. The first refusals of each minute are logged one line each, the rest
counted and summed up in one line (RefusalLog), so a flood of forgeries cannot choose how much is
written. The path carries a job's secret, so neither the path nor the secret is ever logged; an
image's token is a capability as well, kept out of the log the same way.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time

from aiohttp import hdrs, web

from bot import metrics as m
from bot.health import HealthCheck, iso_time
from bot.jobs.image_inputs import INPUTS_PATH
from bot.jobs.stats import JobStats
from bot.jobs.tracker import Tracker
from bot.jobs.types import CALLBACK_PATH, CallbackVerdict
from bot.midjourney.models import parse_callback, webhook_signature
from bot.refusals import RefusalLog, ServerLog

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 64 * 1024
SIGNATURE_WINDOW_SECONDS = 300
# The vendor must be answered within 15 s, so a sender that needs longer than this for a body
# of at most 64 KiB is not the vendor.
BODY_TIMEOUT_SECONDS = 10.0
# aiohttp closes a connection that has not finished a request's headers this long after it
# opened (or after its previous answer); its own default is about an hour.
HEADER_TIMEOUT_SECONDS = 15.0
# Unix seconds have 10 digits for centuries; a longer "number" is refused before int() is asked
# to convert thousands of digits (which raises rather than answers).
_TIMESTAMP_MAX_DIGITS = 12
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# A kept image's name: its token (secrets.token_urlsafe(32)) and its extension.
_INPUT_RE = re.compile(r"[A-Za-z0-9_-]{43}\.(?:png|jpg|webp|gif)")
# The callback route's answers by outcome (mjbot_callbacks_total); any other status is "refused".
# 404 covers a malformed secret too: no job can have it. 400 and 415: an unreadable body.
_CALLBACK_OUTCOMES = {
    200: m.ACCEPTED,
    401: m.BAD_SIGNATURE,
    404: m.UNKNOWN_SECRET,
    400: m.MALFORMED,
    415: m.MALFORMED,
}


def _signature_problem(request: web.Request, task_id: str, key: str) -> str | None:
    """Why the kie.ai signature of this callback is not acceptable; None when it is."""
    timestamp = request.headers.get("X-Webhook-Timestamp", "")
    signature = request.headers.get("X-Webhook-Signature", "")
    if not timestamp or not signature:
        return "unsigned"
    if (
        not (timestamp.isascii() and timestamp.isdecimal())
        or len(timestamp) > _TIMESTAMP_MAX_DIGITS
    ):
        return "timestamp is not Unix seconds"
    if abs(time.time() - int(timestamp)) > SIGNATURE_WINDOW_SECONDS:
        return "timestamp outside the 5-minute window"
    # compare_digest refuses non-ASCII str with TypeError instead of answering False.
    if not signature.isascii():
        return "bad signature"
    if not hmac.compare_digest(webhook_signature(key, task_id, timestamp), signature):
        return "bad signature"
    return None


class Listener:
    """Routes of the listener; the tracker is attached once the API client exists, since in
    sandbox mode the API is served by this very listener and its port is known only after
    binding.

    ``body_timeout`` bounds reading a callback's body (and the lingering after a refusal);
    ``header_timeout`` bounds how long a connection may take to send its headers, and idle.
    """

    def __init__(
        self,
        *,
        hmac_key: str | None = None,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        metrics: m.Metrics | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.tracker: Tracker | None = None
        # Set by the bot with the tracker: /metrics counts the jobs by kind and state with it.
        self.stats: JobStats | None = None
        # Set by the bot; without it /healthz knows only whether a tracker is attached.
        self.health: HealthCheck | None = None
        self.last_callback_at: float | None = None
        self.metrics = metrics
        self._recorder = m.recorder(metrics)
        self._hmac_key = hmac_key
        self._body_timeout = body_timeout
        self._header_timeout = header_timeout
        self.refusals = RefusalLog(log) if refusals is None else refusals
        self.app = web.Application(client_max_size=MAX_CALLBACK_BYTES)
        self.app.router.add_post(CALLBACK_PATH + "{secret}", self.handle_callback)
        self.app.router.add_route("*", CALLBACK_PATH + "{secret}", self.handle_wrong_method)
        if metrics is not None:
            # Off, the route does not exist (404): the numbers reveal the bot's volume.
            self.app.router.add_get("/metrics", self.handle_metrics)
        self.app.router.add_get("/healthz", self.handle_health)
        self.app.router.add_get(INPUTS_PATH + "{name}", self.handle_input)
        self._runner: web.AppRunner | None = None

    def _refuse(
        self, request: web.Request, status: int, why: str, message: str, *, close: bool = False
    ) -> web.Response:
        """A log line (or a count, in a flood) and a JSON error; ``close`` when the body was not
        read to its end, so the connection is not kept for another request behind an unknown
        amount of data."""
        self.refusals.refused(status, request.remote, why)
        response = web.json_response({"error": message}, status=status)
        if close:
            response.force_close()
        return response

    async def handle_callback(self, request: web.Request) -> web.Response:
        response = await self._answer_callback(request)
        self._recorder.callback(_CALLBACK_OUTCOMES.get(response.status, m.REFUSED))
        return response

    async def _answer_callback(self, request: web.Request) -> web.Response:
        secret = request.match_info["secret"]
        if not _SECRET_RE.fullmatch(secret):
            return self._refuse(request, 404, "malformed secret", "unknown callback", close=True)
        if hdrs.CONTENT_TYPE not in request.headers:
            # The vendor documents JSON callbacks; a lost one is still caught by polling.
            return self._refuse(
                request, 415, "no Content-Type", "send application/json", close=True
            )
        if request.content_type != "application/json":
            why = f"Content-Type {request.content_type[:60]!r}"
            return self._refuse(request, 415, why, "send application/json", close=True)
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity")
        if encoding.lower() != "identity":
            why = f"Content-Encoding {encoding[:60]!r}"
            return self._refuse(request, 415, why, "send an uncompressed body", close=True)
        declared = request.content_length
        if declared is not None and declared > MAX_CALLBACK_BYTES:
            why = f"Content-Length {declared} over {MAX_CALLBACK_BYTES}"
            return self._refuse(request, 413, why, "body too large", close=True)
        try:
            async with asyncio.timeout(self._body_timeout):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            why = f"body over {MAX_CALLBACK_BYTES} bytes"
            return self._refuse(request, 413, why, "body too large", close=True)
        except TimeoutError:
            why = f"body not received within {self._body_timeout:g} s"
            return self._refuse(request, 408, why, "body too slow", close=True)
        except (ConnectionError, web.RequestPayloadError) as exc:
            # A sender that hung up or broke the chunked framing: there is no body to judge.
            why = f"body not received: {type(exc).__name__}"
            return self._refuse(request, 400, why, "body incomplete", close=True)
        try:
            notice = parse_callback(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the interpreter's stack.
            return self._refuse(
                request, 400, f"{type(exc).__name__}: {exc}"[:200], "not a callback body"
            )
        if self._hmac_key:
            problem = _signature_problem(request, notice.task_id or "", self._hmac_key)
            if problem is not None:
                why = f"{problem} task={notice.task_id}"
                return self._refuse(request, 401, why, "bad signature")
        if self.tracker is None:
            return self._refuse(request, 503, "not started yet", "starting up")
        verdict = await self.tracker.on_callback(secret, notice.task_id)
        if verdict is CallbackVerdict.UNKNOWN:
            why = f"no job has this secret task={notice.task_id}"
            return self._refuse(request, 404, why, "unknown callback")
        if verdict is CallbackVerdict.MISMATCH:
            why = f"the body names another task than its job's task={notice.task_id}"
            return self._refuse(request, 409, why, "not this callback's task")
        self.last_callback_at = time.time()
        return web.json_response({"ok": True})

    async def handle_wrong_method(self, request: web.Request) -> web.Response:
        response = self._refuse(
            request, 405, f"method {request.method[:20]!r}", "use POST", close=True
        )
        response.headers[hdrs.ALLOW] = "POST"
        self._recorder.callback(m.REFUSED)
        return response

    async def handle_health(self, request: web.Request) -> web.Response:
        """200 when healthy, 503 when not; the body says what was found (bot.health)."""
        if self.health is not None:
            report = await self.health.check()
            body, status = report.body(), report.http_status
        elif self.tracker is not None:
            body, status = {"ok": True, "status": "ok"}, 200
        else:
            body, status = {"ok": False, "status": "starting"}, 503
        body["last_callback_at"] = iso_time(self.last_callback_at)
        return web.json_response(body, status=status, headers={hdrs.CACHE_CONTROL: "no-store"})

    async def handle_input(self, request: web.Request) -> web.StreamResponse:
        """A kept image, to whoever has its link, while it is kept; anything else is a 404
        that names no token."""
        name = request.match_info["name"]
        image = None
        if _INPUT_RE.fullmatch(name) and self.tracker is not None:
            try:
                image = await self.tracker.image_input(name)
            except Exception as exc:
                log.warning("image input not read: %s", type(exc).__name__)
                return web.Response(status=503, text="try again later")
        if image is None:
            return self._refuse(request, 404, "unknown image input", "not found")
        ext = name.rsplit(".", 1)[-1]
        return web.Response(
            body=image.data,
            content_type=image.content_type,
            # The bytes are a member's upload: a browser given the link must show them as the
            # image type they were checked to be, never sniff and run them as a page.
            headers={
                hdrs.CACHE_CONTROL: "private, no-store",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox; default-src 'none'",
                hdrs.CONTENT_DISPOSITION: f'inline; filename="image.{ext}"',
                "Referrer-Policy": "no-referrer",
            },
        )

    async def handle_metrics(self, request: web.Request) -> web.Response:
        """The Prometheus text format; jobs by kind and state are counted from the store now."""
        assert self.metrics is not None
        if self.stats is not None:
            try:
                self.metrics.set_jobs(await self.stats.count_by_kind_and_state())
            except Exception as exc:
                # The other numbers are still worth a scrape; the jobs gauge is left out.
                log.warning("metrics: jobs not counted: %s", type(exc).__name__)
                self.metrics.set_jobs({})
        return web.Response(body=self.metrics.render(), headers={"Content-Type": m.CONTENT_TYPE})

    async def start(self, host: str, port: int) -> int:
        """Serve; returns the port really bound (``port`` may be 0)."""
        self._runner = web.AppRunner(
            self.app,
            # No access log: every callback path carries a job's secret.
            access_log=None,
            handle_signals=False,
            # aiohttp closes a connection whose headers are unfinished when its keep-alive
            # timer fires; that timer is the only bound on a sender that stalls its headers.
            keepalive_timeout=self._header_timeout,
            # After a refusal aiohttp keeps reading (and dropping) an unread body this long
            # before closing, so the sender can still read the answer.
            lingering_time=self._body_timeout,
            # Callbacks are small JSON; decompressing them would only let a sender make the
            # parser inflate bombs or fail outside the handler. Encoded bodies get a 415.
            auto_decompress=False,
            # An adapter, not a Logger: aiohttp only calls its debug() and exception().
            # The logger aiohttp's connection handler reports to (not its shared aiohttp.server).
            logger=ServerLog(self.refusals, logging.getLogger(f"{__name__}.http")),
            # A stalled request must not hold a shutdown past the host's SIGKILL.
            shutdown_timeout=2.0,
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        return int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # After the cleanup: a request still being answered may have refused.
        self.refusals.close()
