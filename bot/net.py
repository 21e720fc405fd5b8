"""Small HTTP helpers shared by the API client and the image fetcher."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

# A body smaller than this is joined on the event loop: a thread's hand-off would cost more.
JOIN_ON_LOOP = 1024 * 1024


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``limit`` bytes.

    A body arriving in several pieces is gathered piece by piece, each what the connection has
    buffered so far (``iter_any``: about a third of the CPU of fixed 64 KiB chunks for a 2 MiB
    image, docs/performance.md section 8); stopping at the limit keeps a hostile or broken
    server from filling memory.
    """
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    if size < JOIN_ON_LOOP:
        return b"".join(parts)
    # bytes.join copies a large body without the GIL, so in a thread the event loop goes on
    # meanwhile; on the loop the copy (and, on a VM, the faults of its fresh pages: tens of
    # milliseconds for 12 MiB measured here) would stop every click and renewal.
    return await asyncio.to_thread(b"".join, parts)


def is_public(address: str) -> bool:
    """Whether ``address`` (an IP literal) is reachable on the public internet: not private,
    loopback, link-local, shared, reserved or multicast. Anything unparseable is not."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    # is_global alone lets multicast through.
    return ip.is_global and not ip.is_multicast


class NonPublicAddressError(OSError):
    """A host that must be public resolved to private, loopback or link-local addresses only."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        super().__init__(f"{host} resolved to non-public addresses only ({', '.join(addresses)})")
        self.host = host


class PublicOnlyResolver(AbstractResolver):
    """Wraps a resolver and drops every non-public address of the hosts not in ``any_address``.

    The connector connects to exactly what this returns, so the check and the connection use the
    same DNS answer: a name cannot pass a check and then be rebound to an internal address.
    aiohttp does not ask a resolver about IP literals; those are for the caller to check.
    """

    def __init__(self, inner: AbstractResolver, *, any_address: Iterable[str]) -> None:
        self._inner = inner
        self._any_address = frozenset(h.lower() for h in any_address)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if host.lower() in self._any_address:
            return answers
        public = [a for a in answers if is_public(a["host"])]
        if not public:
            raise NonPublicAddressError(host, [a["host"] for a in answers])
        return public

    async def close(self) -> None:
        await self._inner.close()
