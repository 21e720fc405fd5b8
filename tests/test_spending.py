"""Spending control end to end: the real bot (discord.py, cogs, tracker, store) against the
Discord double and the sandbox API, with daily allowances, limits set in Discord, /mj usage,
the credit budget, and the refusal where the bot could not post a result."""

from __future__ import annotations

import asyncio
import re

from bot.grid import upscale_custom_id
from tests.fakes.discord_double import (
    ADMINISTRATOR,
    ATTACH_FILES,
    DEFAULT_APP_PERMISSIONS,
    InteractionHandle,
    StoredMessage,
)
from tests.harness import Harness, click, grid_task, imagine, result_for

MANAGE_GUILD = 1 << 5
MORE = r"more <t:\d+:R>\.$"


async def storm(harness: Harness, grid: StoredMessage, user: int) -> list[InteractionHandle]:
    """All four U-buttons of ``grid`` clicked at once by ``user``."""
    double = harness.double
    return list(
        await asyncio.gather(
            *(
                double.click(grid.id, upscale_custom_id(grid_task(grid), n), user)
                for n in range(1, 5)
            )
        )
    )


async def test_a_click_storm_never_passes_the_daily_upscale_allowance(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["DAILY_UPSCALES_PER_USER"] = "3"
    harness.env["MAX_JOBS_PER_USER"] = "10"
    alice = double.add_user("alice")
    async with harness.running():
        first = await imagine(double, alice, "a lighthouse")
        second = await imagine(double, alice, "a harbour")
        sandbox.task_seconds = None  # the storm's upscales stay running: nothing is given back
        handles = await storm(harness, first, alice) + await storm(harness, second, alice)
        for handle in handles:
            await handle.wait_ack()
        await double.wait_for(lambda: sandbox.count("generateUpscale") == 3 or None)
        await double.wait_for(lambda: len([h for h in handles if h.ephemeral_texts()]) >= 5 or None)
        refused = [h for h in handles if h.ephemeral_texts()]
        assert len(refused) == 5
        for handle in refused:
            [text] = handle.ephemeral_texts()
            assert re.fullmatch(r"❌ You have used your 3 upscales for today; " + MORE, text)
        assert sandbox.count("generateUpscale") == 3


async def test_imagine_over_the_allowance_is_refused_privately_with_when_more_comes(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["DAILY_IMAGINES_PER_USER"] = "1"
    alice = double.add_user("alice")
    async with harness.running():
        await imagine(double, alice, "a lighthouse")
        handle = await double.slash("imagine", {"prompt": "a harbour"}, alice)
        await handle.wait_ack()
        refusal = handle.original
        assert refusal is not None and refusal.ephemeral
        assert re.fullmatch(
            r"❌ You have used your 1 generation for today; " + MORE, refusal.content
        )
        assert not any("a harbour" in m.content for m in double.messages(ephemeral=False))
        assert sandbox.count("generate") == 1


async def test_zero_forbids_and_says_an_admin_can_change_it(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["DAILY_IMAGINES_PER_USER"] = "0"
    alice = double.add_user("alice")
    async with harness.running():
        handle = await double.slash("imagine", {"prompt": "a lighthouse"}, alice)
        await handle.wait_ack()
        assert handle.ephemeral_texts() == [
            "❌ Your allowance here has no generations; an admin can change that with /mj limit."
        ]
        assert sandbox.count("generate") == 0


async def test_a_failed_upscale_is_given_back(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["DAILY_UPSCALES_PER_USER"] = "1"
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "a lighthouse")
        # The API refuses the request without taking it: it costs nothing.
        sandbox.fail_next("generateUpscale", 422, "bad index")
        await click(double, grid, 1, alice)
        await double.wait_for_message(lambda m: "bad index" in m.content or None)
        await click(double, grid, 2, alice)
        await result_for(double, 2, alice)
        handle = await click(double, grid, 3, alice)
        [text] = [(await handle.wait_followup()).content]
        assert text.startswith("❌ You have used your 1 upscale for today")
        assert sandbox.count("generateUpscale") == 2


async def test_role_and_member_limits_set_in_discord(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["DAILY_UPSCALES_PER_USER"] = "1"
    alice = double.add_user("alice")
    bob = double.add_user("bob")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    async with harness.running():
        patrons = await double.add_role("Patrons")
        double.give_role(bob, patrons)

        # Only members who can manage the server may change limits, whatever Discord shows.
        denied = await double.slash("mj limit", {"target": patrons, "upscales": "9"}, alice)
        await denied.wait_ack()
        assert denied.ephemeral_texts() == [
            "❌ Only members who can manage the server may change limits."
        ]
        bad = await double.slash("mj limit", {"target": patrons, "upscales": "lots"}, admin)
        await bad.wait_ack()
        assert bad.ephemeral_texts() == [
            "❌ upscales must be a whole number from 0 to 1000000 or unlimited, not 'lots'."
        ]
        made = await double.slash("mj limit", {"target": patrons, "upscales": "3"}, admin)
        told = await made.wait_followup()
        assert told.ephemeral and told.content.startswith(
            f"✅ <@&{patrons}>: (not set) generations, 3 upscales and (not set) videos a day."
        )
        # /mj limit has an option per cost category: the videos allowance too.
        videos = await double.slash("mj limit", {"target": patrons, "videos": "2"}, admin)
        assert (await videos.wait_followup()).content.startswith(
            f"✅ <@&{patrons}>: (not set) generations, 3 upscales and 2 videos a day."
        )

        grid = await imagine(double, alice, "a lighthouse")
        for number in (1, 2, 3):
            await click(double, grid, number, bob)
            await result_for(double, number, bob)
        over = await click(double, grid, 4, bob)
        assert (await over.wait_followup()).content.startswith(
            "❌ You have used your 3 upscales for today"
        )
        # Alice has no role: the setting's one.
        second = await imagine(double, alice, "a harbour")
        await click(double, second, 1, alice)
        await result_for(double, 1, alice)
        over = await click(double, second, 2, alice)
        assert (await over.wait_followup()).content.startswith(
            "❌ You have used your 1 upscale for today"
        )
        # A member's own limit beats the settings and the roles.
        own = await double.slash("mj limit", {"target": alice, "upscales": "unlimited"}, admin)
        assert (
            "unlimited upscales and (not set) videos a day" in (await own.wait_followup()).content
        )
        await click(double, second, 2, alice)
        await result_for(double, 2, alice)
        reset = await double.slash("mj limit", {"target": alice, "reset": True}, admin)
        assert (await reset.wait_followup()).content.startswith(
            f"✅ Removed the limits of <@{alice}>"
        )
        over = await click(double, second, 3, alice)
        assert (await over.wait_followup()).content.startswith("❌ You have used your 1 upscale")
        assert sandbox.count("generateUpscale") == 5


async def test_role_limits_hold_before_the_server_is_cached(harness: Harness) -> None:
    """After a restart (a failover, a reconnect) clicks arrive before the server's GUILD_CREATE:
    discord.py knows none of its roles then. The limits follow the role ids the interaction
    carries. Before: every member counted against the setting's 2, so the trial member got a
    second upscale and the VIP member was refused a third."""
    double, sandbox = harness.double, harness.sandbox
    await harness.standalone()  # the API outlives the restart
    harness.env["DAILY_UPSCALES_PER_USER"] = "2"
    alice = double.add_user("alice")
    trial_member = double.add_user("trial")
    vip_member = double.add_user("vip")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    async with harness.running():
        trial = await double.add_role("Trial")
        vip = await double.add_role("VIP")
        double.give_role(trial_member, trial)
        double.give_role(vip_member, vip)
        for role, upscales in ((trial, "1"), (vip, "unlimited")):
            made = await double.slash("mj limit", {"target": role, "upscales": upscales}, admin)
            assert (await made.wait_followup()).content.startswith(f"✅ <@&{role}>")
        grid = await imagine(double, alice, "a lighthouse")
    double.withheld_guilds.add(double.guild_id)
    async with harness.running() as app:
        guild = app.bot.get_guild(double.guild_id)
        assert guild is None or guild.unavailable
        await click(double, grid, 1, trial_member)
        await result_for(double, 1, trial_member)
        over = await click(double, grid, 2, trial_member)
        assert (await over.wait_followup()).content.startswith(
            "❌ You have used your 1 upscale for today"
        )
        for number in (2, 3, 4):
            await click(double, grid, number, vip_member)
            await result_for(double, number, vip_member)
        assert sandbox.count("generateUpscale") == 4


async def test_usage_for_a_member_and_for_admins(harness: Harness) -> None:
    double = harness.double
    harness.env["DAILY_JOBS_PER_SERVER"] = "50"
    alice = double.add_user("alice")
    bob = double.add_user("bob")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    async with harness.running():
        grid = await imagine(double, alice, "a lighthouse")
        await click(double, grid, 1, alice)
        await result_for(double, 1, alice)
        await click(double, grid, 2, bob)
        await result_for(double, 2, bob)

        own = await double.slash("mj usage", {}, alice)
        text = (await own.wait_followup()).content
        assert re.fullmatch(
            r"You, today: 1 of 20 generations, 1 of 40 upscales, 0 of 5 videos; "
            r"resets <t:\d+:R>\.",
            text,
        )
        nosy = await double.slash("mj usage", {"member": bob}, alice)
        await nosy.wait_ack()
        assert nosy.ephemeral_texts() == [
            "❌ Only members who can manage the server may see someone else's usage."
        ]
        seen = await double.slash("mj usage", {"member": alice}, admin)
        lines = (await seen.wait_followup()).content.splitlines()
        assert lines[0].startswith(f"<@{alice}>, today: 1 of 20 generations, 1 of 40 upscales")
        # 1 generation and 2 upscales at the default costs (8 and 2): no reading yet.
        assert lines[1] == (
            "**This server today:** 3 of 50 jobs, about 12 of unlimited credits "
            "(caps set by the bot's owner)."
        )
        assert lines[2] == f"**Top users today:** <@{alice}> 2, <@{bob}> 1."


async def test_the_server_limit_holds_for_everyone_together(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["DAILY_JOBS_PER_SERVER"] = "3"
    users = [double.add_user(f"user{n}") for n in range(4)]
    async with harness.running():
        grid = await imagine(double, users[0], "a lighthouse")
        handles = await asyncio.gather(
            *(
                double.click(grid.id, upscale_custom_id(grid_task(grid), n + 1), user)
                for n, user in enumerate(users)
            )
        )
        await double.wait_for(lambda: sum(bool(h.ephemeral_texts()) for h in handles) >= 2 or None)
        refused = [t for h in handles for t in h.ephemeral_texts()]
        assert len(refused) == 2
        assert all(
            re.fullmatch(r"❌ This server has used its 3 jobs for today; " + MORE, t)
            for t in refused
        )
        await double.wait_for(lambda: sandbox.count("generateUpscale") == 2 or None)
        assert sandbox.count("generateUpscale") == 2


async def test_no_paid_call_where_the_bot_may_not_attach_the_result(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "a lighthouse")
        # An admin took Attach Files from the bot in this channel after the grid was posted.
        double.channel_app_permissions[grid.channel_id] = DEFAULT_APP_PERMISSIONS & ~ATTACH_FILES
        handle = await click(double, grid, 1, alice)
        told = await handle.wait_followup()
        assert told.ephemeral and told.content == (
            "❌ The bot may not post the result here: a server admin must give it "
            "**Attach Files** in this channel. Nothing was started or charged."
        )
        command = await double.slash("imagine", {"prompt": "a harbour"}, alice)
        await command.wait_ack()
        assert "**Attach Files**" in command.ephemeral_texts()[0]
        assert sandbox.count("generateUpscale") == 0 and sandbox.count("generate") == 1
        # Once fixed, the click is paid once and posted.
        del double.channel_app_permissions[grid.channel_id]
        await click(double, grid, 1, alice)
        await result_for(double, 1, alice)
        assert sandbox.count("generateUpscale") == 1


async def test_a_restart_in_the_middle_of_the_day_keeps_the_counts(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    await harness.standalone()  # the API outlives the bot, which is restarted twice
    harness.env["DAILY_UPSCALES_PER_USER"] = "2"
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "a lighthouse")
        await click(double, grid, 1, alice)
        await result_for(double, 1, alice)
    async with harness.running():
        await click(double, grid, 2, alice)
        await result_for(double, 2, alice)
    async with harness.running():
        over = await click(double, grid, 3, alice)
        assert (await over.wait_followup()).content.startswith(
            "❌ You have used your 2 upscales for today"
        )
        usage = await double.slash("mj usage", {}, alice)
        assert "1 of 20 generations, 2 of 2 upscales" in (await usage.wait_followup()).content
    assert sandbox.count("generateUpscale") == 2


async def test_the_credit_budget_holds_in_a_storm_and_tells_the_admins_once(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    admins = double.add_channel("admins")
    harness.env["ADMIN_CHANNEL_ID"] = str(admins)
    # A generation costs 8 and an upscale 2 at the sandbox: one grid and one upscale fit.
    harness.env["DAILY_CREDIT_BUDGET"] = "10"
    alice = double.add_user("alice")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    start = sandbox.credits
    async with harness.running() as app:
        await sandbox.wait_for_call("credit")
        grid = await imagine(double, alice, "a lighthouse")
        handles = await storm(harness, grid, alice)
        await double.wait_for(lambda: sum(bool(h.ephemeral_texts()) for h in handles) >= 3 or None)
        refused = [t for h in handles for t in h.ephemeral_texts()]
        assert len(refused) == 3
        assert all(
            re.fullmatch(
                r"❌ The bot has spent its daily credit budget \(10 credits\); " + MORE, text
            )
            for text in refused
        )
        await double.wait_for(lambda: sandbox.count("generateUpscale") == 1 or None)
        await app.services.credit_watch.check()
        notice = await double.wait_for_message(lambda m: m.channel_id == admins)
        assert "daily credit budget of 10 credits (`DAILY_CREDIT_BUDGET`) is reached" in (
            notice.content
        )
        # More refusals, more readings: still the one notice.
        late = await click(double, grid, 1, alice)
        await late.wait_followup()
        await app.services.credit_watch.check()
        await app.services.credit_watch.wait_quiet()
        assert len([m for m in double.messages(admins)]) == 1
        # The account's day is the owners' to see; a server's admin sees their server's.
        usage = await double.slash("mj usage", {}, admin)
        report = (await usage.wait_followup()).content
        assert "every server" not in report and "about 10 of unlimited credits" in report
        usage = await double.slash("mj usage", {}, double.owner_id)
        report = (await usage.wait_followup()).content
        assert "**Credits spent today, every server:** 10 of 10." in report
        assert (
            "**Credits per job, as the budget counts them:** generation 8, upscale 2, image "
            "prompt 8, style reference 8, omni reference 16, video 16, video extension 16, "
            "video ×2 32, HD video 48, HD video extension 48, video ×4 64, HD video ×2 96, "
            "HD video ×4 192."
        ) in report
        assert (
            "Credits per job"
            not in (await (await double.slash("mj usage", {}, admin)).wait_followup()).content
        )
    assert start - sandbox.credits == 10
