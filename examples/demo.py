"""See the bot work without a Discord application: ``python -m examples.demo [--out DIR]``.

This runs the real bot, ``bot.app.App`` (discord.py, the cogs, the job store, the listener), built
from settings as ``python -m bot`` builds it. Two things are stood in for: Discord is the double
the tests use (``tests/fakes/discord_double.py``, a REST API and gateway on 127.0.0.1 that the
unmodified discord.py client talks to), and the Midjourney API is the sandbox
(``MJ_API_BASE_URL=sandbox``), which draws its own pictures and costs nothing. A member runs
/imagine, clicks U1, clicks U1 again, clicks V1 and animates the upscale; the demo prints what
they would see and writes every image and video the bot posted into a folder.

The double is not installed by ``pip install .``: run this from the root of a clone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from bot.app import App
from bot.config import Settings, load_settings
from bot.logs import make_formatter
from bot.midjourney.sandbox import SandboxAPI
from bot.redaction import RedactingFilter

try:
    from tests.fakes.discord_double import (
        DiscordDouble,
        InteractionHandle,
        StoredMessage,
        point_discord_at,
    )
except ModuleNotFoundError as missing:
    if not (missing.name or "").startswith("tests"):
        raise
    sys.exit(
        "the demo needs tests/fakes/ from a clone of the repository: "
        "run `python -m examples.demo` from the repository's root folder"
    )

PROMPT = "a lighthouse at dawn"
DEFAULT_OUT = Path("demo-output")
# The double takes any token; the bot still sends one, as it would to Discord.
TOKEN = "demo-token-for-the-discord-double"
# Every step waits for what it expects; this only bounds a demo that went wrong.
STEP_TIMEOUT = 20.0
SUCCESS = 3  # Discord's button style "success": the bot turns a button green once it is taken


async def run_demo(out: Path) -> None:
    """The whole demo: start Discord's double and the bot, play the member, stop everything."""
    log_file = prepared(out) / "bot.log"
    say("Starting the bot against a local Discord double and the API sandbox")
    say(f"(the bot's log goes to {log_file})")
    with tempfile.TemporaryDirectory(prefix="mj-demo-") as scratch:
        async with DiscordDouble(guild_name="Demo Server") as double:
            with point_discord_at(double):
                settings = demo_settings(double, Path(scratch))
                with logs_to(log_file, settings):
                    async with running_bot(settings):
                        await play_member(double, out)
    say("")
    say(f"Stopped. The images are in {out}/")


def prepared(out: Path) -> Path:
    """The output folder, made here: a blocking call kept out of the coroutines."""
    out.mkdir(parents=True, exist_ok=True)
    return out


def demo_settings(double: DiscordDouble, scratch: Path) -> Settings:
    """What a newcomer would put in .env to try the bot on the sandbox, and nothing more."""
    env = {
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_GUILD_ID": str(double.guild_id),
        "MJ_API_BASE_URL": "sandbox",
        # A throwaway store: the demo leaves no jobs behind.
        "DATABASE_URL": f"sqlite:///{scratch}/demo.sqlite3",
        "HOST": "127.0.0.1",
    }
    # PORT accepts only real ports; 0 (any free one) keeps the demo clear of a bot already running.
    return replace(load_settings(env), port=0)


@contextlib.contextmanager
def logs_to(path: Path, settings: Settings) -> Iterator[None]:
    """The bot's log lines go to a file, redacted and formatted as in production, so that the
    terminal shows only what a member sees."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(make_formatter(settings.log_format))
    handler.addFilter(RedactingFilter(settings.secrets))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved_handlers, saved_level
        handler.close()


@contextlib.asynccontextmanager
async def running_bot(settings: Settings) -> AsyncIterator[App]:
    # A second per task, so that the status lines stand for a moment as they would on the real
    # API, and pictures large enough to be worth opening (an upscale is twice as large).
    sandbox = SandboxAPI(task_seconds=1.0, image_size=512)
    # The double sends its one server at once: no need to wait 2 s for more before on_ready.
    app = App(settings, sandbox=sandbox, guild_ready_timeout=0.1)
    running = asyncio.create_task(app.start(settings.discord_token))
    ready = asyncio.create_task(app.bot.wait_until_ready())
    done, _ = await asyncio.wait(
        {running, ready}, timeout=STEP_TIMEOUT, return_when="FIRST_COMPLETED"
    )
    if ready not in done:
        ready.cancel()
        if running.done():
            running.result()  # the bot's own error says more than ours
        await app.close()
        await running
        raise RuntimeError(f"the bot did not connect to the Discord double in {STEP_TIMEOUT} s")
    try:
        yield app
    finally:
        await app.close()
        await asyncio.wait_for(running, timeout=STEP_TIMEOUT)


async def play_member(double: DiscordDouble, out: Path) -> None:
    member = double.add_user("alice")
    names = {member: "alice", double.bot_user_id: double.bot_name}

    def shown(text: str) -> str:
        return as_discord_shows(text, names)

    say(f"The bot is in {double.guild_name!r}, #general. alice is a member there.")

    say("")
    say(f'1. alice runs /imagine prompt:"{PROMPT}"')
    imagine = await double.slash("imagine", {"prompt": PROMPT}, member)
    await imagine.wait_ack(timeout=STEP_TIMEOUT)
    status = imagine.original
    if status is not None:
        say(f"   status line:  {shown(status.content)}")
    grid = await double.wait_for_message(
        lambda m: m.kind == "channel" and PROMPT in m.content and len(m.files) == 4,
        timeout=STEP_TIMEOUT,
    )
    say(f"   grid posted:  {shown(grid.content)}  [4 images]")
    say_buttons(grid)
    saved = save_images(grid, out, "grid")
    if status is not None:
        await double.wait_for(lambda: status.deleted or None, timeout=STEP_TIMEOUT)
        say("   (the status line is removed once the grid is posted)")

    say("")
    say("2. alice clicks U1")
    await press(double, grid, "U1", member)
    upscaling = await double.wait_for_message(
        lambda m: "Upscaling image #1" in m.content, timeout=STEP_TIMEOUT
    )
    say(f"   status line:  {shown(upscaling.content)}")
    result = await double.wait_for_message(
        lambda m: "Image #1" in m.content and bool(m.files), timeout=STEP_TIMEOUT
    )
    say(f"   result:       {shown(result.content)}  [1 image, upscaled]")
    saved += save_images(result, out, "U1")
    # The bot removes the status line once the delivery is recorded, so the next click finds the
    # upscale done rather than still running.
    await double.wait_for(lambda: upscaling.deleted or None, timeout=STEP_TIMEOUT)
    say("   (the status line is removed once the result is posted)")
    await double.wait_for(lambda: grid.button(label="U1").style == SUCCESS or None)
    say("   U1 under the grid is now green: that image was upscaled")

    say("")
    say("3. alice clicks U1 again (nothing is paid twice)")
    again = await press(double, grid, "U1", member)
    answer = await again.wait_followup(timeout=STEP_TIMEOUT)
    say(f"   only alice sees:  {shown(answer.content)}")

    say("")
    say("4. alice clicks V1")
    await press(double, grid, "V1", member)
    varying = await double.wait_for_message(
        lambda m: "Making variations of image #1" in m.content, timeout=STEP_TIMEOUT
    )
    say(f"   status line:  {shown(varying.content)}")
    variations = await double.wait_for_message(
        lambda m: "Variations (image #1)" in m.content and len(m.files) == 4,
        timeout=STEP_TIMEOUT,
    )
    say(f"   new grid:     {shown(variations.content)}  [4 images]")
    say_buttons(variations)
    saved += save_images(variations, out, "V1")
    await double.wait_for(lambda: varying.deleted or None, timeout=STEP_TIMEOUT)
    say("   (the status line is removed once the new grid is posted)")

    say("")
    say("5. alice clicks 🎬 Animate (low motion) under the upscaled image")
    say(f"   buttons:      {' '.join(b.label or '' for b in result.buttons())}")
    await press(double, result, "🎬 Animate (low motion)", member)
    animating = await double.wait_for_message(
        lambda m: "Animating image #1" in m.content, timeout=STEP_TIMEOUT
    )
    say(f"   status line:  {shown(animating.content)}")
    video = await double.wait_for_message(
        lambda m: " - Video (" in m.content and bool(m.files), timeout=STEP_TIMEOUT
    )
    say(f"   video:        {shown(video.content)}  [1 video, MP4]")
    say(f"   buttons:      {' '.join(b.label or '' for b in video.buttons())}")
    saved += save_images(video, out, "video")

    say("")
    # What to look for when opening them: the sandbox's pictures are not art.
    say("The sandbox draws each image as a checkerboard with its own quarter inverted, so the")
    say("upscale and the variations show which image of the grid they came from.")
    say(f"{len(saved)} files written:")
    for path in saved:
        say(f"   {path}")


async def press(
    double: DiscordDouble, message: StoredMessage, label: str, user: int
) -> InteractionHandle:
    """Click a button by the label the member sees, and wait until the bot took the click."""
    handle = await double.click(message.id, message.button(label=label).custom_id or "", user)
    await handle.wait_ack(timeout=STEP_TIMEOUT)
    return handle


def say_buttons(message: StoredMessage) -> None:
    labels = [button.label or "" for button in message.buttons()]
    # Discord lays them out in rows of five at most, as the bot sends them.
    say(f"   buttons:      {' '.join(labels[:5])}")
    say(f"                 {' '.join(labels[5:])}")


def save_images(message: StoredMessage, out: Path, step: str) -> list[Path]:
    saved = []
    for number, (filename, data) in enumerate(message.attachments, start=1):
        path = out / f"{step}-{number}{Path(filename).suffix or '.png'}"
        path.write_bytes(data)
        saved.append(path)
    return saved


def as_discord_shows(text: str, names: dict[int, str]) -> str:
    """Mentions as names, timestamps as times and **bold** plain, as a Discord client shows them."""
    text = re.sub(r"<@!?(\d+)>", lambda m: "@" + names.get(int(m[1]), m[1]), text)
    text = re.sub(
        r"<t:(\d+):R>", lambda m: datetime.fromtimestamp(int(m[1])).strftime("%H:%M:%S"), text
    )
    return text.replace("**", "")


def say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo",
        description="Watch the bot answer /imagine, U1 and V1 against a local Discord double and "
        "the API sandbox, with no Discord application and no API key.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for the posted images and the bot's log (default: {DEFAULT_OUT}/)",
    )
    asyncio.run(run_demo(parser.parse_args().out))


if __name__ == "__main__":
    main()
