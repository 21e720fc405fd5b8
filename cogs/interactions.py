"""What every cog does with an interaction: answer privately, keep a follow-up for later, record
the acknowledgement, and the one error path for commands and buttons."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot.delivery.texts import allowed_mentions
from bot.jobs import texts
from bot.jobs.types import FollowUp
from bot.metrics import Recorder

log = logging.getLogger(__name__)

SORRY = "❌ Something went wrong on the bot's side; the server admin can find details in its log."
# Discord's answer to a first response later than 3 s.
UNKNOWN_INTERACTION = 10062
# Option values in a log line: a prompt may be 2000 characters.
OPTION_CHARS = 200
# What one Discord message may hold.
MESSAGE_CHARS = 2000


async def tell(interaction: discord.Interaction[Any], text: str) -> None:
    """An ephemeral answer, whether or not the interaction was acknowledged yet; a text longer
    than a message may be (an owner's list of every server) goes as several, cut at lines."""
    first, *more = pieces(text)
    if interaction.response.is_done():
        await _follow_up(interaction.followup, interaction.id, first)
    else:
        try:
            await interaction.response.send_message(
                first, ephemeral=True, allowed_mentions=allowed_mentions()
            )
        except discord.HTTPException as exc:
            log.warning("could not answer interaction %s: %s", interaction.id, exc.status)
            return
    for piece in more:
        await _follow_up(interaction.followup, interaction.id, piece)


def pieces(text: str, size: int = MESSAGE_CHARS) -> list[str]:
    """``text`` in messages of at most ``size`` characters, cut between lines where it can;
    never a blank one, which Discord refuses."""
    out: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > size:
            if current:
                out.append(current)
                current = ""
            out.append(line[:size])
            line = line[size:]
        if current and len(current) + 1 + len(line) > size:
            out.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    out.append(current)
    return [piece.rstrip() for piece in out if piece.strip()] or ["…"]


async def _follow_up(followup: discord.Webhook, interaction_id: int, text: str) -> None:
    try:
        await followup.send(text, ephemeral=True, allowed_mentions=allowed_mentions())
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction_id, exc.status)


def acked(
    metrics: Recorder, interaction: discord.Interaction[Any], command: str, started: float
) -> None:
    """Record the acknowledgement just made (when metrics are on): from ``started``, the
    handler's ``time.monotonic()`` at entry (what the bot controls), and from the interaction's
    creation (its snowflake, by Discord's clock: adds gateway latency and any clock skew)."""
    metrics.acked(command, started, interaction.created_at.timestamp())


def follow_up_for(interaction: discord.Interaction[Any]) -> FollowUp:
    """Ephemeral follow-ups for an acknowledged interaction, for as long as its token lives.

    Only the application id and the token: a job keeps them for up to 15 minutes (in memory
    and in the store, for whichever process finishes it), not the interaction with the clicked
    message and its view, which every full garbage collection would walk.
    """
    return FollowUp(
        interaction.application_id, interaction.token, interaction.expires_at.timestamp()
    )


# What the bot needs where it posts a result, in the words of Discord's settings.
_POSTING = (("view_channel", "View Channel"), ("attach_files", "Attach Files"))


def cannot_post(interaction: discord.Interaction[Any]) -> str | None:
    """Why the bot could not post a result where the interaction happened, as a refusal to the
    requester; None when it can. Asked before any paid call: a result that cannot be posted
    would be paid for and lost."""
    if interaction.guild_id is None:
        return None
    granted = interaction.app_permissions
    in_thread = isinstance(interaction.channel, discord.Thread)
    send = (
        ("send_messages_in_threads", "Send Messages in Threads")
        if in_thread
        else (
            "send_messages",
            "Send Messages",
        )
    )
    missing = [label for flag, label in (*_POSTING, send) if not getattr(granted, flag)]
    if not missing:
        return None
    names = " and ".join(f"**{label}**" for label in missing)
    return (
        f"❌ The bot may not post the result here: a server admin must give it {names} in "
        "this channel. Nothing was started or charged."
    )


def outside_servers(interaction: discord.Interaction[Any]) -> str | None:
    """The refusal for an interaction from outside a server the bot was added to: a DM, a
    group DM, or a copy a user installed for themselves (where the bot cannot post, and no
    server's limits hold); None inside one. Commands are registered for servers only, so this
    is the second line: a client that ignores the contexts still gets nothing."""
    if interaction.guild_id is not None and interaction.is_guild_integration():
        return None
    return f"❌ {texts.ONLY_IN_SERVERS}."


class ServersOnlyTree(app_commands.CommandTree[Any]):
    """Every slash command runs only where ``outside_servers`` lets it."""

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        refusal = outside_servers(interaction)
        if refusal is None:
            return True
        log.info("refused outside servers %s", context(interaction))
        await tell(interaction, refusal)
        return False


def role_ids(interaction: discord.Interaction[Any]) -> tuple[int, ...]:
    """The user's roles in the server, always with @everyone (whose id is the server's); none
    in DMs."""
    return member_role_ids(interaction.user, interaction.guild_id)


def member_role_ids(user: discord.abc.User, guild_id: int | None) -> tuple[int, ...]:
    """The role ids the interaction's payload gives the member (``member.roles``, or the
    resolved member of an option), whether or not the server is in discord.py's cache.

    ``Member.roles`` looks each id up in the cache and silently drops those it does not know:
    clicks that arrive before the server's GUILD_CREATE (after a reconnect or a failover) would
    count against the defaults. discord.py keeps the payload's ids unchanged in ``_roles``, and
    the payload is kept nowhere else (``Interaction.data`` is its ``data`` part only); it is
    private, hence discord.py pinned below 2.8 and the end-to-end test of an uncached server.
    """
    if guild_id is None or not isinstance(user, discord.Member):
        return ()
    return tuple({guild_id, *user._roles})


def context(interaction: discord.Interaction[Any]) -> str:
    """The interaction in a log line: what was used, by whom, where; never its token."""
    command = interaction.command
    if command is not None:
        options = " ".join(
            f"{name}={str(value)[:OPTION_CHARS]!r}" for name, value in interaction.namespace
        )
        what = f"/{command.qualified_name}" + (f" {options}" if options else "")
    else:
        data: Any = interaction.data or {}
        what = f"component {data.get('custom_id', '?')!r}"
    return (
        f"{what} interaction={interaction.id} user={interaction.user.id} "
        f"guild={interaction.guild_id} channel={interaction.channel_id}"
    )


async def report_error(interaction: discord.Interaction[Any], error: Exception) -> None:
    """The one error path: a command or button that failed is logged with its context, and the
    person who used it is told, privately, whether or not it was acknowledged yet."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, app_commands.AppCommandError):
        # Discord.py refused the input before the command ran (a check, a value it could not
        # convert): nothing of the bot's failed, so no traceback.
        log.warning("refused %s: %s", context(interaction), error)
        await tell(interaction, f"❌ That could not be done: {error}")
        return
    if isinstance(error, discord.NotFound) and error.code == UNKNOWN_INTERACTION:
        # The acknowledgement came after Discord's 3 s (an overloaded bot, a lagging gateway):
        # the clicker was told "This interaction failed", and nothing can reach them now. A
        # storm of these must not bury the log in tracebacks.
        log.warning("too late to answer %s: Discord had given up on it", context(interaction))
        return
    log.error("failed %s", context(interaction), exc_info=error)
    await tell(interaction, SORRY)


async def on_command_error(
    interaction: discord.Interaction[Any], error: app_commands.AppCommandError
) -> None:
    """discord.py's hook for every slash command's error (CommandTree.on_error)."""
    await report_error(interaction, error)
