"""Tests of the Discord double, driven by a real, unmodified discord.py bot."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakes.discord_double import (
    DEFAULT_MEMBER_PERMISSIONS,
    MANAGE_MESSAGES,
    DiscordDouble,
)

TOKEN = "fake-token"
Button = discord.ui.Button[discord.ui.View]


class DeferThenFollowup(discord.ui.DynamicItem[Button], template=r"t:(?P<n>[0-9]+)"):
    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label=f"U{n}", custom_id=f"t:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[discord.ui.View],
        match: re.Match[str],
        /,
    ) -> DeferThenFollowup:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send("x", ephemeral=True)


class TurnGreen(discord.ui.DynamicItem[Button], template=r"g:(?P<n>[0-9]+)"):
    def __init__(self, n: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"V{n}", style=discord.ButtonStyle.secondary, custom_id=f"g:{n}"
            )
        )

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[discord.ui.View],
        match: re.Match[str],
        /,
    ) -> TurnGreen:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        self.item.style = discord.ButtonStyle.success
        await interaction.response.edit_message(view=self.view)


class DoubleBot(commands.Bot):
    """A small bot with guild commands; events it saw are kept for assertions."""

    def __init__(self, double: DiscordDouble) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
            help_command=None,
        )
        self.double = double
        self.ready_event = asyncio.Event()
        self.guild_event = asyncio.Event()
        self.gate = asyncio.Event()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(DeferThenFollowup, TurnGreen)
        guild = discord.Object(id=self.double.guild_id)

        @self.tree.command(name="hello", description="Say hi", guild=guild)
        async def hello(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("hi")

        @self.tree.command(name="echo", description="Echo text", guild=guild)
        async def echo(
            interaction: discord.Interaction, text: str, times: app_commands.Range[int, 1, 3]
        ) -> None:
            can_manage = interaction.permissions.manage_messages
            await interaction.response.send_message(
                f"{text * times} manage={can_manage}", ephemeral=True
            )

        @self.tree.command(name="think", description="Defer then answer", guild=guild)
        async def think(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True, ephemeral=True)
            await interaction.followup.send("done")

        @self.tree.command(name="slow", description="Defer, wait for the test", guild=guild)
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            await self.gate.wait()
            try:
                await interaction.followup.send("late")
            except discord.HTTPException as exc:
                await self.errors.put(exc)

        await self.tree.sync(guild=guild)

    async def on_ready(self) -> None:
        self.ready_event.set()

    async def on_guild_available(self, guild: discord.Guild) -> None:
        self.guild_event.set()


@contextlib.asynccontextmanager
async def running(bot: DoubleBot) -> AsyncIterator[DoubleBot]:
    """Start the bot and wait until it is ready with the guild cached; close it afterwards."""
    task = asyncio.create_task(bot.start(TOKEN))

    async def ready() -> None:
        await bot.ready_event.wait()
        await bot.guild_event.wait()

    waiter = asyncio.create_task(ready())
    try:
        done, _ = await asyncio.wait({task, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if task.done():
                task.result()
            raise TimeoutError("the bot did not become ready")
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(task, timeout=5)


async def post_view(bot: DoubleBot, content: str, item: discord.ui.Item[discord.ui.View]) -> int:
    view = discord.ui.View(timeout=None)
    view.add_item(item)
    message = await bot.get_partial_messageable(bot.double.channel_id).send(content, view=view)
    return message.id


async def test_bot_logs_in_syncs_commands_and_caches_guild(double: DiscordDouble) -> None:
    async with running(DoubleBot(double)) as bot:
        await double.wait_until_connected()
        assert bot.user is not None and bot.user.id == double.bot_user_id
        assert bot.application_id == double.application_id
        assert set(double.commands(double.guild_id)) == {"hello", "echo", "think", "slow"}
        assert double.commands() == {}
        assert double.command_syncs[-1].guild_id == double.guild_id
        guild = bot.get_guild(double.guild_id)
        assert guild is not None and guild.me is not None
        assert isinstance(bot.get_channel(double.channel_id), discord.TextChannel)
        assert double.count_requests("GET", "/users/@me") == 1
        assert double.count_requests("PUT", r"/applications/\d+/guilds/\d+/commands") == 1
        assert double.unknown_requests == []


async def test_a_withheld_guild_is_unknown_until_its_guild_create(double: DiscordDouble) -> None:
    double.withheld_guilds.add(double.guild_id)
    bot = DoubleBot(double)
    task = asyncio.create_task(bot.start(TOKEN))
    try:
        await asyncio.wait_for(bot.ready_event.wait(), timeout=5)
        guild = bot.get_guild(double.guild_id)
        assert guild is not None and guild.unavailable and not guild.roles
        await double.send_guild_create(double.guild_id)
        await asyncio.wait_for(bot.guild_event.wait(), timeout=5)
        guild = bot.get_guild(double.guild_id)
        assert guild is not None and not guild.unavailable and guild.roles
    finally:
        await bot.close()
        await asyncio.wait_for(task, timeout=5)


async def test_slash_send_message_is_a_visible_message(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    async with running(DoubleBot(double)):
        handle = await double.slash("hello", {}, user)
        ack = await handle.wait_ack()
        assert ack.type == 4
        assert 0 < ack.ack_seconds < 3
        assert handle.original is not None
        assert handle.original.content == "hi" and not handle.original.ephemeral
        assert [m.content for m in double.messages(double.channel_id)] == ["hi"]


async def test_slash_options_permissions_and_ephemeral_reply(double: DiscordDouble) -> None:
    alice = double.add_user("alice")
    mod = double.add_user("mod", permissions=DEFAULT_MEMBER_PERMISSIONS | MANAGE_MESSAGES)
    async with running(DoubleBot(double)):
        first = await double.slash("echo", {"text": "ab", "times": 2}, alice)
        second = await double.slash("echo", {"text": "c", "times": 1}, mod)
        await first.wait_ack()
        await second.wait_ack()
        assert first.ephemeral_texts() == ["abab manage=False"]
        assert second.ephemeral_texts() == ["c manage=True"]
        assert double.messages(ephemeral=False) == []
        with pytest.raises(ValueError, match="required"):
            await double.slash("echo", {"text": "x"}, alice)
        with pytest.raises(LookupError):
            await double.slash("nope", {}, alice)


async def test_thinking_defer_then_followup_fills_the_original(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    async with running(DoubleBot(double)):
        handle = await double.slash("think", {}, user)
        ack = await handle.wait_ack()
        assert ack.type == 5 and ack.data == {"flags": 64}
        followup = await handle.wait_followup()
        assert handle.original is followup
        assert followup.content == "done" and followup.ephemeral and not followup.loading


async def test_dynamic_button_defer_and_ephemeral_followup(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    async with running(DoubleBot(double)) as bot:
        message_id = await post_view(bot, "pick", DeferThenFollowup(7))
        assert double.message(message_id).button("t:7").label == "U7"
        handle = await double.click(message_id, "t:7", user)
        ack = await handle.wait_ack()
        assert ack.type == 6
        followup = await handle.wait_followup()
        assert followup.ephemeral and followup.content == "x"
        assert handle.ephemeral_texts() == ["x"]
        assert [m.content for m in double.messages(ephemeral=False)] == ["pick"]
        with pytest.raises(LookupError):
            await double.click(message_id, "t:8", user)


async def test_dynamic_button_edit_message_turns_green(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    async with running(DoubleBot(double)) as bot:
        message_id = await post_view(bot, "grid", TurnGreen(2))
        assert double.message(message_id).button("g:2").style == 2
        handle = await double.click(message_id, "g:2", user)
        ack = await handle.wait_ack()
        assert ack.type == 7
        message = double.message(message_id)
        assert message.button("g:2").style == 3
        assert message.edits == 1 and message.content == "grid"
        assert handle.original is message


async def test_channel_post_with_file_keeps_exact_bytes(double: DiscordDouble) -> None:
    data = bytes(range(256)) * 40
    async with running(DoubleBot(double)) as bot:
        channel = bot.get_partial_messageable(double.channel_id)
        sent = await channel.send("img", file=discord.File(io.BytesIO(data), filename="a.png"))
        stored = double.message(sent.id)
        assert stored.attachments == [("a.png", data)]
        assert sent.attachments[0].size == len(data)
        assert await sent.attachments[0].read() == data

        edited = await sent.edit(
            attachments=[sent.attachments[0], discord.File(io.BytesIO(b"bb"), filename="b.png")]
        )
        assert stored.attachments == [("a.png", data), ("b.png", b"bb")]
        await edited.edit(attachments=[discord.File(io.BytesIO(b"cc"), filename="c.png")])
        assert stored.attachments == [("c.png", b"cc")] and stored.edits == 2

        await edited.delete()
        assert double.messages() == [] and double.deleted_messages() == [stored]


async def test_nonce_with_enforce_nonce_creates_one_message(double: DiscordDouble) -> None:
    async with running(DoubleBot(double)) as bot:
        channel = bot.get_partial_messageable(double.channel_id)
        first = await channel.send("once", nonce="job-1")
        second = await channel.send("once again", nonce="job-1")
        assert first.id == second.id
        assert [(m.content, m.nonce) for m in double.messages()] == [("once", "job-1")]
        assert double.count_requests("POST", r"/channels/\d+/messages") == 2


async def test_allowed_mentions_decide_who_is_pinged(double: DiscordDouble) -> None:
    alice, bob = double.add_user("alice"), double.add_user("bob")
    role = await double.add_role("mods")
    text = f"@here <@&{role}> <@{alice}> <@!{bob}>"
    async with running(DoubleBot(double)) as bot:
        channel = bot.get_partial_messageable(double.channel_id)
        # DoubleBot sets no client default: a message without allowed_mentions pings them all.
        every = double.message((await channel.send(text)).id)
        assert (every.mentions, every.mention_roles, every.mention_everyone) == (
            [alice, bob],
            [role],
            True,
        )
        only = await channel.send(
            text, allowed_mentions=discord.AllowedMentions(users=[discord.Object(bob)])
        )
        stored = double.message(only.id)
        # The fields left out of an AllowedMentions default to True: roles and @here still ping.
        assert (stored.mentions, stored.mention_roles, stored.mention_everyone) == (
            [bob],
            [role],
            True,
        )
        await only.edit(content=text, allowed_mentions=discord.AllowedMentions.none())
        assert (stored.mentions, stored.mention_roles, stored.mention_everyone) == ([], [], False)
        # An edit that leaves the content alone leaves the mentions alone, as on Discord.
        await only.edit(view=None, allowed_mentions=discord.AllowedMentions.all())
        assert stored.mentions == []

        with pytest.raises(discord.HTTPException) as both:
            await bot.http.send_message(
                double.channel_id,
                params=discord.http.MultipartParameters(
                    payload={
                        "content": text,
                        "allowed_mentions": {"parse": ["users"], "users": [str(bob)]},
                    },
                    multipart=None,
                    files=None,
                ),
            )
        assert both.value.status == 400


async def test_held_response_comes_after_the_post_is_stored(double: DiscordDouble) -> None:
    # discord.py sends one request at a time per channel: the unheld post goes to another one.
    other = double.add_channel("other")
    async with running(DoubleBot(double)) as bot:
        channel = bot.get_partial_messageable(double.channel_id)
        hold = double.hold_responses(
            "POST", r"/channels/\d+/messages", where=lambda body: body.get("content") == "held"
        )
        pending = asyncio.create_task(channel.send("held", nonce="n-1"))
        record = await hold.wait_held()
        assert record.body["nonce"] == "n-1"
        # Discord has the message; its sender does not know yet.
        (stored,) = double.messages()
        assert stored.content == "held" and not pending.done()
        # A post the hold does not match is answered meanwhile.
        async with asyncio.timeout(5):
            await bot.get_partial_messageable(other).send("free")
        hold.release()
        assert (await pending).id == stored.id
        # The hold applied to one answer only.
        again = await channel.send("held")
        assert again.id != stored.id and len(hold.held) == 1 and hold.released


async def test_close_answers_held_requests_before_stopping() -> None:
    double = DiscordDouble()
    await double.start()
    try:
        hold = double.hold_responses("GET", "/users/@me")
        async with aiohttp.ClientSession() as session:

            async def get_me() -> int:
                async with session.get(double.api_base + "/users/@me") as response:
                    return response.status

            request = asyncio.create_task(get_me())
            await hold.wait_held()
            assert not request.done()
            await double.close()
            assert hold.released
            assert await request == 200
    finally:
        await double.close()


async def test_second_bot_process_handles_click_on_old_message(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    async with running(DoubleBot(double)) as first_bot:
        message_id = await post_view(first_bot, "persisted", DeferThenFollowup(5))
    async with running(DoubleBot(double)):
        handle = await double.click(message_id, "t:5", user)
        assert (await handle.wait_ack()).type == 6
        assert (await handle.wait_followup()).content == "x"
    assert len(double.identifies) == 2


async def test_unknown_route_answers_404_json(double: DiscordDouble) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(double.api_base + "/definitely/not/here") as response:
            assert response.status == 404
            assert response.headers["Content-Type"] == "application/json"
            body = await response.json()
    assert body["code"] == 0 and "not/here" in body["message"]
    assert [r.path for r in double.unknown_requests] == ["/definitely/not/here"]


async def test_fail_next_and_limits_surface_as_discord_errors(double: DiscordDouble) -> None:
    async with running(DoubleBot(double)) as bot:
        with pytest.raises(discord.NotFound):
            await bot.http.request(discord.http.Route("GET", "/nope"))

        channel = bot.get_partial_messageable(double.channel_id)
        double.fail_next("POST", r"/channels/\d+/messages", 403, code=50013)
        with pytest.raises(discord.Forbidden) as forbidden:
            await channel.send("nope")
        assert forbidden.value.code == 50013 and forbidden.value.text == "Missing Permissions"

        double.fail_next("POST", r"/channels/\d+/messages", 429, retry_after=0.01)
        await channel.send("after a 429")

        double.attachment_size_limit = 10
        with pytest.raises(discord.HTTPException) as too_big:
            await channel.send(file=discord.File(io.BytesIO(b"x" * 11), filename="big.png"))
        assert too_big.value.status == 413 and too_big.value.code == 40005

        assert [m.content for m in double.messages()] == ["after a 429"]
        assert double.count_requests("POST", r"/channels/\d+/messages") == 4


async def test_second_callback_is_refused_with_40060(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    async with running(DoubleBot(double)):
        handle = await double.slash("hello", {}, user)
        await handle.wait_ack()
        url = f"{double.api_base}/interactions/{handle.id}/{handle.token}/callback"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"type": 4, "data": {"content": "again"}}) as resp:
                assert resp.status == 400
                assert (await resp.json())["code"] == 40060
    assert [c.error_code for c in handle.rejected_callbacks] == [40060]
    assert [m.content for m in double.messages()] == ["hi"]


async def test_expired_token_makes_followup_fail(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    async with running(DoubleBot(double)) as bot:
        handle = await double.slash("slow", {}, user)
        assert (await handle.wait_ack()).type == 5
        double.expire_interaction(handle)
        bot.gate.set()
        error = await asyncio.wait_for(bot.errors.get(), timeout=5)
        assert isinstance(error, discord.NotFound) and error.code == 10015
        assert handle.followups == []


async def test_dropped_gateway_resumes_and_replays_events(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    async with running(DoubleBot(double)):
        await double.drop_gateway()
        # Dispatched while the socket is down: delivered by the RESUME replay.
        handle = await double.slash("hello", {}, user)
        await double.wait_until_connected()
        assert (await handle.wait_ack()).type == 4
        assert double.resumes == 1 and len(double.identifies) == 1


async def test_late_first_callback_is_refused_like_discord(double: DiscordDouble) -> None:
    user = double.add_user("alice")
    double.ack_deadline = 0.0
    async with running(DoubleBot(double)):
        handle = await double.slash("hello", {}, user)
        callback = await handle.wait_ack()
        assert not callback.accepted and callback.error_code == 10062
        assert handle.ack is None and double.messages() == []
