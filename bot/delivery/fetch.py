"""Download a result image (or an image attached to /imagine) safely: trusted hosts only, public
addresses for the vendors' hosts, redirects checked hop by hop, a size cap, and bytes that really
are an image."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from bot.config import VENDOR_RESULT_HOSTS
from bot.jobs.types import DeliveryError
from bot.net import NonPublicAddressError, PublicOnlyResolver, is_public, read_capped

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 3
# Downloads at once, per fetcher. Each socket with data is read once per turn of the event loop,
# about 1 ms a read of 256 KiB on loopback: 24 results of a burst fetched together made turns of
# 40 ms (docs/performance.md §8); and each download is held in memory whole. The others wait
# their turn before their timeout starts.
DOWNLOADS_AT_ONCE = 4

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)


def image_kind(data: bytes) -> str | None:
    """The file extension the bytes really are (PNG, JPEG, GIF, WebP), or None."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass(frozen=True)
class Image:
    data: bytes
    filename: str


class ImageFetcher:
    """Downloads result images from trusted hosts only, with a size cap, and checks they are
    images; redirects are followed by hand so that each hop is checked too.

    Hosts in ``public_only`` (the vendors' file hosts) must resolve to public addresses; the other
    trusted hosts were named by the operator (MJ_RESULT_HOSTS, the API host, which is 127.0.0.1
    in sandbox mode) and may be anywhere. The address check is made by the fetcher's own
    resolver at connection time, so a DNS answer cannot change between check and connect.
    Build it inside the running event loop, and close() it.
    """

    def __init__(
        self,
        trusted_hosts: Iterable[str],
        *,
        public_only: Iterable[str] = VENDOR_RESULT_HOSTS,
        resolver: AbstractResolver | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
        timeout: float = 60.0,
    ) -> None:
        self._trusted = frozenset(h.lower() for h in trusted_hosts)
        self._any_address = self._trusted - frozenset(h.lower() for h in public_only)
        self._resolver = PublicOnlyResolver(
            resolver or aiohttp.DefaultResolver(), any_address=self._any_address
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=self._resolver),
            # A proxy would resolve the names itself, out of the resolver's sight.
            trust_env=False,
        )
        self._max = max_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=10)
        self._slots = asyncio.Semaphore(DOWNLOADS_AT_ONCE)

    async def close(self) -> None:
        await self._session.close()
        await self._resolver.close()

    def _refusal(self, url: str) -> str | None:
        """Why ``url`` may not be fetched, or None if it may."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            return "the result link is not a valid URL"
        if parts.scheme not in ("http", "https") or not host:
            return "the result link is not an http(s) link"
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        # aiohttp connects to an IP literal without asking the resolver, so it is checked here.
        if literal is not None and host not in self._any_address and not is_public(host):
            return (
                f"the result link points to {host}, a private, loopback or link-local address, "
                "which the bot does not download from"
            )
        if host not in self._trusted:
            return (
                f"the result is hosted on {host}, which is not a trusted host "
                "(the server admin can add it to MJ_RESULT_HOSTS)"
            )
        return None

    async def fetch(self, url: str, stem: str) -> Image:
        data = await self.download(url)
        kind = image_kind(data)
        if kind is None:
            raise DeliveryError("the result file is not an image", retry=False)
        return Image(data, f"{stem}.{kind}")

    async def download(
        self,
        url: str,
        *,
        max_bytes: int | None = None,
        timeout: float | None = None,
        what: str = "image",
    ) -> bytes:
        """The bytes at ``url``, every hop checked, at most the cap (``max_bytes`` instead of
        the fetcher's, for a video); what they are is the caller's to check. ``what`` the
        result is goes into the reasons of a failure."""
        cap = self._max if max_bytes is None else max_bytes
        limits = (
            self._timeout if timeout is None else aiohttp.ClientTimeout(total=timeout, connect=10)
        )
        for _ in range(MAX_REDIRECTS + 1):
            refusal = self._refusal(url)
            if refusal is not None:
                raise DeliveryError(refusal, retry=False)
            try:
                async with (
                    self._slots,
                    self._session.get(url, allow_redirects=False, timeout=limits) as response,
                ):
                    if response.status in (301, 302, 303, 307, 308):
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if response.status != 200:
                        raise DeliveryError(
                            f"the result {what} could not be downloaded (HTTP {response.status})",
                            retry=response.status >= 500 or response.status == 429,
                        )
                    data = await read_capped(response, cap)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
                    exc.os_error, NonPublicAddressError
                ):
                    raise DeliveryError(
                        f"the result host {exc.os_error.host} resolved to a private, loopback "
                        "or link-local address, so the bot did not download from it",
                        retry=False,
                    ) from exc
                raise DeliveryError(
                    f"the result {what} could not be downloaded ({type(exc).__name__})",
                    retry=True,
                ) from exc
            if data is None:
                raise DeliveryError(
                    f"the result {what} is larger than the bot accepts", retry=False
                )
            return data
        raise DeliveryError(f"the result {what} is behind too many redirects", retry=False)
