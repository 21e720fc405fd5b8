"""Small HTTP helpers shared by the API client and the image fetcher."""

from __future__ import annotations

import aiohttp

CHUNK = 64 * 1024


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``limit`` bytes.

    ``StreamReader.read(n)`` returns only what is buffered so far, so a body arriving in several
    pieces must be gathered chunk by chunk; stopping at the limit keeps a hostile or broken
    server from filling memory.
    """
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
