"""The one error path for commands and buttons: the real bot against the Discord double, with its
job database broken under it (the jobs table dropped by another connection), so that every
command and every click meets an error nothing in the bot expects."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from cogs.interactions import SORRY
from tests.fakes.discord_double import ADMINISTRATOR, InteractionHandle
from tests.harness import Harness, grid_task, imagine

MANAGE_GUILD = 1 << 5


def break_database(harness: Harness) -> None:
    path = harness.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE jobs")


def failure_lines(caplog: pytest.LogCaptureFixture, handle: InteractionHandle) -> list[str]:
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "cogs.interactions" and f"interaction={handle.id}" in record.getMessage()
    ]
    # The interaction's token answers for the bot for 15 minutes: never in a log line.
    assert handle.token not in caplog.text
    return lines


async def test_a_failing_click_is_logged_with_its_context_and_told_to_the_clicker(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    double = harness.double
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "a lighthouse")
        break_database(harness)
        caplog.set_level(logging.INFO)
        custom_id = grid.button(label="U2").custom_id
        handle = await double.click(grid.id, custom_id or "", alice)
        assert (await handle.wait_ack()).type == 6
        told = await handle.wait_followup()
        assert told.ephemeral and told.content == SORRY
        [line] = failure_lines(caplog, handle)
        assert line.startswith(f"failed component 'mju:{grid_task(grid)}:2' ")
        assert f"user={alice} guild={double.guild_id} channel={handle.channel_id}" in line
        [record] = [r for r in caplog.records if r.getMessage() == line]
        assert record.levelno == logging.ERROR and record.exc_info is not None


async def test_a_failing_command_is_logged_with_its_options_and_told_to_its_user(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    double = harness.double
    alice = double.add_user("alice")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    async with harness.running():
        break_database(harness)
        caplog.set_level(logging.INFO)

        handle = await double.slash("imagine", {"prompt": "a red fox"}, alice)
        # The allowances are looked up before anything visible is posted: the error is the
        # answer, and the channel sees nothing.
        assert (await handle.wait_ack()).type == 4
        assert handle.ephemeral_texts() == [SORRY]
        assert handle.original is not None and handle.original.ephemeral
        [line] = failure_lines(caplog, handle)
        assert line.startswith("failed /imagine prompt='a red fox' ")

        status = await double.slash("mj status", {}, admin)
        told = await status.wait_followup()
        assert told.ephemeral and told.content == SORRY
        [line] = failure_lines(caplog, status)
        assert line.startswith(f"failed /mj status interaction={status.id} user={admin} ")
