"""/mj status for server admins and the bot's owners: the real bot against the Discord double."""

from __future__ import annotations

import socket

from tests.fakes.discord_double import ADMINISTRATOR
from tests.harness import Harness, click, imagine, result_for

MANAGE_GUILD = 1 << 5


async def test_status_shows_jobs_credits_callbacks_and_failures_to_admins_only(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    async with harness.running():
        # The low-credit watch reads the credits once at start; a refused /mj status never does.
        await sandbox.wait_for_call("credit")
        refused = await double.slash("mj status", {}, alice)
        await refused.wait_ack()
        assert refused.original is not None and refused.original.ephemeral
        assert "manage the server" in refused.original.content
        assert sandbox.count("credit") == 1

        grid = await imagine(double, alice, "for the books")
        await click(double, grid, 1, alice)
        await result_for(double, 1, alice)
        sandbox.fail_next("generateUpscale", 402)
        failed = await click(double, grid, 2, alice)
        await failed.wait_followup()

        # A server's admin: its jobs and failures, never the account or the callback URL.
        handle = await double.slash("mj status", {}, admin)
        report = await handle.wait_followup()
        assert report.ephemeral
        assert "this server: 0 queued, 0 running, 2 done, 1 failed" in report.content
        assert "out of credits" in report.content
        assert "credits left" not in report.content and "Callbacks" not in report.content
        assert "http://" not in report.content and "Servers:" not in report.content

        # The bot's owner (the application's owner in the double): everything, bot-wide.
        handle = await double.slash("mj status", {}, double.owner_id)
        report = await handle.wait_followup()
        assert report.ephemeral
        # One grid and one upscale delivered, one upscale failed on the 402.
        assert "every server: 0 queued, 0 running, 2 done, 1 failed" in report.content
        assert f"{sandbox.credits} credits left (warning below 100)" in report.content
        assert f"- **Test Guild** `{double.guild_id}`: ✅ served" in report.content
        assert "Callbacks: expected at" in report.content
        assert (
            "Daily limits: 20 generations, 40 upscales and 5 videos per member, unlimited jobs "
            "per server unless an owner set its own, budget unlimited credits; the day turns at "
            "midnight UTC"
        ) in report.content
        assert "out of credits" in report.content
        assert "Variations: not learned yet: V1 and V4 work and teach it" in report.content
        assert (
            "Videos: SD (480p), 1 per 🎬 click; ⏩: not learned yet: ⏩ of a first video (and of "
            "a fourth of four) works and teaches it"
        ) in report.content
        assert (
            "Credits per job (learnt from the credit readings, else the defaults): generation 8, "
            "upscale 2, image prompt 8, style reference 8, omni reference 16, video 16, video "
            "extension 16, video ×2 32, HD video 48, HD video extension 48, video ×4 64, HD video "
            "×2 96, HD video ×4 192"
        ) in report.content


async def test_status_says_when_public_url_does_not_reach_the_bot(harness: Harness) -> None:
    double = harness.double
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        harness.env["PUBLIC_URL"] = f"http://127.0.0.1:{probe.getsockname()[1]}"
    async with harness.running() as app:
        await double.wait_for(lambda: app.services.selfcheck.reachable is False or None)
        handle = await double.slash("mj status", {}, double.owner_id)
        report = await handle.wait_followup()
        assert "does not reach the bot (it could not be reached" in report.content
        assert "finished by polling" in report.content
