"""The aiohttp listener: the callback route the API calls, and a health check."""

from __future__ import annotations

import hmac
import json
import logging
import re
import time

from aiohttp import web

from bot.jobs.tracker import CALLBACK_PATH, Tracker
from bot.midjourney.models import MalformedAnswer, parse_callback, webhook_signature

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 64 * 1024
SIGNATURE_WINDOW_SECONDS = 300
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _signature_ok(request: web.Request, task_id: str, key: str) -> bool:
    timestamp = request.headers.get("X-Webhook-Timestamp", "")
    signature = request.headers.get("X-Webhook-Signature", "")
    if not (timestamp.isdecimal() and timestamp.isascii()) or not signature:
        return False
    if abs(time.time() - int(timestamp)) > SIGNATURE_WINDOW_SECONDS:
        return False
    return hmac.compare_digest(webhook_signature(key, task_id, timestamp), signature)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Listener:
    """Routes of the listener; the tracker is attached once the API client exists, since in
    sandbox mode the API is served by this very listener and its port is known only after
    binding."""

    def __init__(self, *, hmac_key: str | None = None) -> None:
        self.tracker: Tracker | None = None
        self._hmac_key = hmac_key
        self.app = web.Application(client_max_size=MAX_CALLBACK_BYTES)
        self.app.router.add_post(CALLBACK_PATH + "{secret}", self.handle_callback)
        self.app.router.add_get("/healthz", self.handle_health)
        self._runner: web.AppRunner | None = None

    async def handle_callback(self, request: web.Request) -> web.Response:
        secret = request.match_info["secret"]
        if not _SECRET_RE.fullmatch(secret):
            return _error(404, "unknown callback")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            log.warning("callback refused: body over %d bytes", MAX_CALLBACK_BYTES)
            return _error(413, "body too large")
        try:
            notice = parse_callback(json.loads(raw))
        except (ValueError, MalformedAnswer) as exc:
            log.warning("callback refused: %s", exc)
            return _error(400, "not a callback body")
        if self._hmac_key and not _signature_ok(request, notice.task_id or "", self._hmac_key):
            log.warning("callback refused: bad or missing signature task=%s", notice.task_id)
            return _error(401, "bad signature")
        if self.tracker is None:
            return _error(503, "starting up")
        if not await self.tracker.on_callback(secret, notice.task_id):
            log.warning("callback for an unknown secret task=%s", notice.task_id)
            return _error(404, "unknown callback")
        return web.json_response({"ok": True})

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": self.tracker is not None})

    async def start(self, host: str, port: int) -> int:
        """Serve; returns the port really bound (``port`` may be 0)."""
        # No access log: every callback path carries a job's secret.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        return int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
