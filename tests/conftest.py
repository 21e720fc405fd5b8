"""Fixtures shared across the test packages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.discord_double import DiscordDouble, point_discord_at


@pytest.fixture
async def double() -> AsyncIterator[DiscordDouble]:
    """A Discord double that every discord.py client created in the test talks to."""
    async with DiscordDouble() as fake:
        with point_discord_at(fake):
            yield fake
    assert fake.internal_errors == []
