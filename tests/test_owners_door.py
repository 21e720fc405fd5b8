"""The owner's door, end to end: the real bot (discord.py, cogs, tracker, store) against the
Discord double with two servers and the sandbox API. Credits are spent only in servers an owner
allows, under caps only owners set; never from a DM or a user's own install."""

from __future__ import annotations

import re

from bot.app import App
from bot.grid import reroll_custom_id, upscale_custom_id, vary_custom_id
from bot.midjourney.sandbox import SandboxAPI
from tests.fakes.discord_double import (
    ADMINISTRATOR,
    DM_CONTEXT,
    USER_INSTALL,
    DiscordDouble,
    InteractionHandle,
    StoredMessage,
)
from tests.harness import Harness, grid_task, imagine, result_for

MANAGE_GUILD = 1 << 5
NOT_SERVED = (
    "❌ The bot's owner has not enabled it in this server, so it starts nothing here. An owner "
    "of the bot can run /mj server allow in this server; nothing was charged."
)
ONLY_IN_SERVERS = (
    "❌ The bot works only inside the servers its owner has enabled, not in direct messages nor "
    "through a copy you installed for yourself; nothing was charged."
)
PAID = ("generate", "generateUpscale", "generateVary")


def paid_calls(sandbox: SandboxAPI) -> int:
    return sum(sandbox.count(endpoint) for endpoint in PAID)


async def job_count(app: App) -> int:
    return sum((await app.services.stats.states_since(0)).values())


async def answer(handle: InteractionHandle) -> str:
    """The one private answer the interaction got."""
    # A deferred command's answer replaces its empty "thinking" message.
    texts = await handle._double.wait_for(
        lambda: [t for t in handle.ephemeral_texts() if t] or None
    )
    assert len(texts) == 1, texts
    return texts[0]


async def imagine_in(double: DiscordDouble, channel: int, user: int, prompt: str) -> StoredMessage:
    handle = await double.slash("imagine", {"prompt": prompt}, user, channel_id=channel)
    await handle.wait_ack()
    return await double.wait_for_message(
        lambda m: m.channel_id == channel and len(m.attachments) == 4 and prompt in m.content
    )


async def test_a_server_not_served_gets_no_paid_call_from_any_command_or_button(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    _, elsewhere = double.add_guild("Somebody else's server")
    alice = double.add_user("alice")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    owner = double.owner_id
    async with harness.running() as app:
        # DISCORD_GUILD_ID (the harness's server) is served.
        await imagine(double, alice, "a lighthouse")
        before, jobs = paid_calls(sandbox), await job_count(app)
        looked = sandbox.count("record-info")

        # A task made outside the bot: another server's would be unknown there anyway.
        foreign = sandbox.add_generation(prompt="a fox")
        tries = [
            await double.slash("imagine", {"prompt": "a fox"}, alice, channel_id=elsewhere),
            await double.slash(
                "upscale", {"task_id": foreign, "image": 1}, alice, channel_id=elsewhere
            ),
            await double.slash("upscale", {"task_id": foreign}, alice, channel_id=elsewhere),
        ]
        for handle in tries:
            assert await answer(handle) == NOT_SERVED
        assert not double.messages(elsewhere, ephemeral=False)
        assert paid_calls(sandbox) == before and await job_count(app) == jobs
        assert sandbox.count("record-info") == looked  # nor the re-post's look-up

        # Only an owner opens the door, and only an owner closes it.
        refused = await double.slash("mj server allow", {}, admin, channel_id=elsewhere)
        assert await answer(refused) == "❌ Only the bot's owners may allow a server."
        allowed = await double.slash("mj server allow", {}, owner, channel_id=elsewhere)
        assert (await answer(allowed)).startswith("✅ The bot now works in this server.")
        grid = await imagine_in(double, elsewhere, alice, "a harbour")
        closed = await double.slash("mj server deny", {}, owner, channel_id=elsewhere)
        assert (await answer(closed)).startswith("✅ The bot starts nothing more in this server")
        before = paid_calls(sandbox)
        jobs = await job_count(app)

        task = grid_task(grid)
        for custom_id in (
            upscale_custom_id(task, 1),
            vary_custom_id(task, 1),
            reroll_custom_id(task),
        ):
            click = await double.click(grid.id, custom_id, alice)
            assert await answer(click) == NOT_SERVED
        again = await double.slash("imagine", {"prompt": "a fox"}, alice, channel_id=elsewhere)
        assert await answer(again) == NOT_SERVED
        assert paid_calls(sandbox) == before
        assert await job_count(app) == jobs

        listed = await double.slash("mj server list", {}, owner)
        lines = (await answer(listed)).splitlines()
        assert any(
            line.startswith(f"- **Test Guild** `{double.guild_id}`: ✅ served, listed in")
            for line in lines
        ), lines
        assert any(
            "Somebody else's server" in line
            and "⛔ not served, stopped by an owner (/mj server deny); today 1 of unlimited jobs"
            in line
            for line in lines
        ), lines


async def test_dms_and_user_installs_get_no_paid_call(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "a lighthouse")
        before = paid_calls(sandbox)
        for context in (DM_CONTEXT, USER_INSTALL):
            command = await double.slash("imagine", {"prompt": "a fox"}, alice, context=context)
            assert await answer(command) == ONLY_IN_SERVERS
            status = await double.slash("mj status", {}, double.owner_id, context=context)
            assert await answer(status) == ONLY_IN_SERVERS
            click = await double.click(
                grid.id, upscale_custom_id(grid_task(grid), 1), alice, context=context
            )
            assert await answer(click) == ONLY_IN_SERVERS
        assert paid_calls(sandbox) == before
        assert [b.label for b in grid.buttons() if b.style == 3] == []


async def test_every_command_is_registered_for_servers_only(harness: Harness) -> None:
    double = harness.double
    async with harness.running():
        commands = double.commands(double.guild_id)
        assert set(commands) >= {"imagine", "upscale", "mj"}
        for command in commands.values():
            assert command["contexts"] == [0], command["name"]
            assert command["integration_types"] == [0], command["name"]


async def test_an_admin_cannot_lift_a_member_past_the_owners_caps(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["MAX_JOBS_PER_USER"] = "10"
    alice = double.add_user("alice")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    owner = double.owner_id
    async with harness.running():
        # Caps are the owners': a server's admin cannot set them.
        refused = await double.slash("mj server limit", {"jobs": "unlimited"}, admin)
        assert await answer(refused) == "❌ Only the bot's owners may set a server's caps."
        capped = await double.slash("mj server limit", {"jobs": "4", "credits": "12"}, owner)
        assert await answer(capped) == (
            "✅ This server's daily caps: 4 jobs and 12 credits. What was used today still counts."
        )
        lifted = await double.slash(
            "mj limit",
            {"target": double.guild_id, "imagines": "unlimited", "upscales": "unlimited"},
            admin,
        )
        assert "this server's caps set by the bot's owner hold: 4 jobs and 12 credits" in (
            await answer(lifted)
        )

        grid = await imagine(double, alice, "a lighthouse")  # 8 credits at the default cost
        first = await double.click(grid.id, upscale_custom_id(grid_task(grid), 1), alice)
        await first.wait_ack()
        await result_for(double, 1, alice)  # 10
        second = await double.click(grid.id, upscale_custom_id(grid_task(grid), 2), alice)
        await second.wait_ack()
        await result_for(double, 2, alice)  # 12: the credits are used up, one job is left
        third = await double.click(grid.id, upscale_custom_id(grid_task(grid), 3), alice)
        assert re.fullmatch(
            r"❌ This server has used its 12 credits for today; more <t:\d+:R>\.",
            await answer(third),
        )
        more = await double.slash(
            "mj server limit", {"credits": "unlimited"}, owner
        )  # the jobs cap still holds
        await answer(more)
        fourth = await double.click(grid.id, upscale_custom_id(grid_task(grid), 3), alice)
        await fourth.wait_ack()
        await result_for(double, 3, alice)
        fifth = await double.click(grid.id, upscale_custom_id(grid_task(grid), 4), alice)
        assert re.fullmatch(
            r"❌ This server has used its 4 jobs for today; more <t:\d+:R>\.", await answer(fifth)
        )
        assert sandbox.count("generate") == 1 and sandbox.count("generateUpscale") == 3


async def test_a_servers_admin_sees_nothing_of_another_server(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    other, elsewhere = double.add_guild("Other server")
    harness.env["ALLOWED_GUILD_IDS"] = str(other)
    alice = double.add_user("alice")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    async with harness.running():
        await imagine(double, alice, "a lighthouse")
        grid = await imagine_in(double, elsewhere, alice, "a secret harbour")
        sandbox.fail_next("generateUpscale", 402)
        failed = await double.click(grid.id, upscale_custom_id(grid_task(grid), 1), alice)
        await failed.wait_followup()

        status = await double.slash("mj status", {}, admin)
        report = await answer(status)
        assert "this server: 0 queued, 0 running, 1 done, 0 failed" in report
        assert "No failures recorded." in report
        assert f"**Top users today:** <@{alice}> 1." in report
        for secret in ("credits left", "Callbacks", "http", "Other server", str(other), "out of"):
            assert secret not in report
        usage = await double.slash("mj usage", {}, admin)
        text = await answer(usage)
        assert "**This server today:** 1 of unlimited jobs, about 8 of" in text
        assert "every server" not in text

        # The other server's admin sees its own failure.
        there = await double.slash("mj status", {}, admin, channel_id=elsewhere)
        assert "this server: 0 queued, 0 running, 1 done, 1 failed" in await answer(there)


async def test_owners_are_the_applications_accepted_team_admins_and_developers_and_owner_ids(
    harness: Harness,
) -> None:
    double = harness.double
    admin, developer, invited, reader, listed, member = (
        double.add_user(name, permissions=ADMINISTRATOR | MANAGE_GUILD)
        for name in ("admin", "developer", "invited", "reader", "listed", "member")
    )
    double.team_members = [
        (admin, "admin", 2),
        (developer, "developer", 2),
        (invited, "admin", 1),
        (reader, "read_only", 2),
    ]
    harness.env["OWNER_IDS"] = str(listed)
    async with harness.running():
        for user, owner in (
            (admin, True),
            (developer, True),
            (listed, True),
            (invited, False),
            (reader, False),
            (member, False),
            # A team owns the application: its owner field is not who decides.
            (double.owner_id, False),
        ):
            handle = await double.slash("mj server limit", {}, user)
            text = await answer(handle)
            assert text.startswith("This server's daily caps") is owner, (user, text)


async def test_a_paid_job_whose_result_cannot_be_posted_still_counts(harness: Harness) -> None:
    """Taking the bot's permissions away after each click (so the post fails after the API was
    paid) must not give the job back: the caps would never see what was spent."""
    double, sandbox = harness.double, harness.sandbox
    harness.env["MAX_JOBS_PER_USER"] = "10"
    alice = double.add_user("alice")
    async with harness.running():
        capped = await double.slash("mj server limit", {"credits": "12"}, double.owner_id)
        await answer(capped)
        grid = await imagine(double, alice, "a lighthouse")  # 8 of 12 credits
        refused = []
        for n in (1, 2, 3, 4):
            hold = sandbox.hold("generateUpscale")
            handle = await double.click(grid.id, upscale_custom_id(grid_task(grid), n), alice)
            await handle.wait_ack()
            if n > 2:
                refused.append(await answer(handle))
                hold.release()
                continue
            await sandbox.wait_held(hold)
            # Discord refuses the result: the bot may no longer post there (Missing Permissions).
            double.fail_next("POST", r"/channels/[0-9]+/messages", 403, code=50013)
            hold.release()
            await double.wait_for(
                lambda n=n: (
                    [
                        m
                        for m in double.messages(ephemeral=False)
                        if m.content.startswith(f"❌ Upscale of image #{n} ")
                    ]
                    or None
                )
            )
        assert sandbox.count("generateUpscale") == 2  # 8 + 2 + 2: the cap, and no further
        assert all("This server has used its 12 credits for today" in t for t in refused)


async def test_the_owners_list_of_many_servers_reaches_them_whole(harness: Harness) -> None:
    double = harness.double
    names = [f"A community server with a fairly ordinary name {n}" for n in range(40)]
    for name in names:
        double.add_guild(name)
    async with harness.running():
        listed = await double.slash("mj server list", {}, double.owner_id)
        await listed.wait_followup(count=2)
        await double.wait_for(
            lambda: f"**{names[-1]}**" in "\n".join(listed.ephemeral_texts()) or None
        )
        texts = listed.ephemeral_texts()
        assert all(len(t) <= 2000 for t in texts)
        whole = "\n".join(texts)
        assert all(f"**{name}**" in whole for name in names)
