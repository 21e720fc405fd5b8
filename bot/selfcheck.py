"""Whether PUBLIC_URL really reaches a listener of this bot, checked once at start.

The bot asks its own public URL for a path carrying a token it made with the key every process
of this bot shares (bot.jobs.callback_secrets, from the bot token). Whichever process answers,
behind a load balancer or not, it signs the token with that key: an answer so signed proves
callbacks can arrive, since every process takes every callback; anything else means the bot
relies on polling.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from bot.jobs.callback_secrets import CallbackSecrets
from bot.net import read_capped

log = logging.getLogger(__name__)

SELFCHECK_PATH = "/selfcheck/"
TIMEOUT_SECONDS = 10.0


def public_url_warning(public_url: str) -> str | None:
    """Why ``public_url`` cannot be reached by the vendor, when its host shows it plainly."""
    host = (urlsplit(public_url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return f"PUBLIC_URL {public_url} points at localhost, which the API cannot reach"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_global:
        return f"PUBLIC_URL {public_url} is a private or local address, which the API cannot reach"
    return None


class SelfCheck:
    """The route on the listener, and the request that tries it through PUBLIC_URL."""

    def __init__(self, app: web.Application, keys: CallbackSecrets) -> None:
        self._keys = keys
        # None until checked; then whether the public URL led back to this bot.
        self.reachable: bool | None = None
        self.detail = "not checked yet"
        app.router.add_get(SELFCHECK_PATH + "{token}", self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        # Only tokens this bot made are signed: the route proves nothing to anyone else.
        if not self._keys.made_here(token):
            raise web.HTTPNotFound()
        # Signed with the path in front: no callback secret (a nonce of the base64 alphabet and
        # its tag) can be had from this route.
        return web.Response(text=self._keys.sign(SELFCHECK_PATH + token))

    async def run(self, session: aiohttp.ClientSession, public_url: str) -> bool:
        """Ask ``public_url`` for the one-time path; logs the outcome in one plain line."""
        warning = public_url_warning(public_url)
        if warning:
            log.warning("%s; jobs will be finished by polling", warning)
        token = self._keys.new()
        url = public_url.rstrip("/") + SELFCHECK_PATH + token
        try:
            async with session.get(
                url, timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
            ) as response:
                body = await read_capped(response, 1024)
                self.reachable = response.status == 200 and secrets.compare_digest(
                    body or b"", self._keys.sign(SELFCHECK_PATH + token).encode()
                )
                self.detail = (
                    "it leads back to this bot"
                    if self.reachable
                    else f"it answered HTTP {response.status}, but not as this bot"
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.reachable = False
            self.detail = f"it could not be reached ({type(exc).__name__})"
        if self.reachable:
            log.info("PUBLIC_URL %s reaches this bot's listener: callbacks can arrive", public_url)
        else:
            log.warning(
                "PUBLIC_URL %s does not reach this bot's listener: %s; callbacks will not arrive, "
                "jobs are finished by polling the API",
                public_url,
                self.detail,
            )
        return self.reachable
