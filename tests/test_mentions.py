"""A prompt is anyone's text: the real bot against the Discord double, with a prompt full of
@everyone, @here, role and user mentions, pings nobody but the requester on their result."""

from __future__ import annotations

import pytest

from bot.grid import vary_custom_id
from bot.midjourney.sandbox import FAIL_MARKER
from tests.fakes.discord_double import DiscordDouble, StoredMessage
from tests.harness import (
    Harness,
    click,
    grid_task,
    imagine,
    loose_mentions,
    message_payloads,
    result_for,
    submitted,
)


async def prompt_pinging_everyone(double: DiscordDouble) -> tuple[str, int]:
    """A prompt that would ping the whole server, a role and a bystander if sent as it is."""
    bystander = double.add_user("bystander")
    role = await double.add_role("moderators")
    return f"@everyone @here <@&{role}> <@{bystander}> a red fox", bystander


def pinged_elsewhere(double: DiscordDouble, requester: int) -> list[StoredMessage]:
    """The bot's messages that ping @everyone, @here, a role or anyone but ``requester``."""
    return [
        m
        for m in double.messages()
        if m.mention_everyone or m.mention_roles or not set(m.mentions) <= {requester}
    ]


@pytest.mark.parametrize("client_default", [True, False], ids=["client-default", "each-message"])
async def test_a_prompt_full_of_mentions_pings_only_its_requester(
    harness: Harness, client_default: bool
) -> None:
    double = harness.double
    alice = double.add_user("alice")
    prompt, bystander = await prompt_pinging_everyone(double)
    async with harness.running() as app:
        if not client_default:
            # Each message must be safe on its own, not only through the client-wide default.
            app.bot.allowed_mentions = None
        grid = await imagine(double, alice, prompt)
        assert f"<@{bystander}>" in grid.content and "@everyone" in grid.content

        await click(double, grid, 1, alice)
        result = await result_for(double, 1, alice)
        await submitted(double, grid, 1)
        # A second click is answered privately (tell, after the acknowledgement).
        again = await (await click(double, grid, 1, alice)).wait_followup()
        assert "already upscaled" in again.content

        await press(double, grid, vary_custom_id(grid_task(grid), 1), alice)
        variations = await double.wait_for_message(
            lambda m: "Variations (image #1)" in m.content and len(m.attachments) == 4
        )

        failing = await double.slash("imagine", {"prompt": f"{prompt} {FAIL_MARKER}"}, alice)
        await failing.wait_ack()
        whisper = await failing.wait_followup()
        assert whisper.ephemeral and whisper.content.startswith("❌")
        status = failing.original
        assert status is not None
        await double.wait_for(lambda: "failed" in status.content or None)

    payloads = message_payloads(double)
    sent = {where.split("/")[1] for where, _ in payloads}
    assert sent == {"channels", "interactions", "webhooks"}
    assert loose_mentions(payloads, alice) == []
    # What Discord makes of them: the results ping their requester, and nobody else is pinged.
    assert result.mentions == [alice] and grid.mentions == [alice]
    assert variations.mentions == [alice]
    assert pinged_elsewhere(double, alice) == []


async def press(double: DiscordDouble, grid: StoredMessage, custom_id: str, user: int) -> None:
    assert (await (await double.click(grid.id, custom_id, user)).wait_ack()).accepted
