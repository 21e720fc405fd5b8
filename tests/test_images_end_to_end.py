"""/imagine with images (image prompts, a style or a subject reference): the real bot (discord.py,
cogs, tracker, store, listener) against the Discord double sending real attachments, and the
sandbox fetching them as the API would."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from bot.grid import reroll_custom_id
from bot.jobs.image_inputs import INPUTS_PATH
from bot.jobs.tables import image_inputs, jobs
from tests.fakes.discord_double import DiscordDouble, InteractionHandle, StoredMessage
from tests.harness import GRID_LABELS, Harness, grid_task


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


RED, BLUE = (200, 30, 40), (20, 60, 220)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    # Lossless where the format allows, so the mean colour is the colour itself.
    Image.new("RGB", size, colour).save(out, format=fmt, lossless=True)
    return out.getvalue()


async def imagine_with(
    double: DiscordDouble, user: int, prompt: str, **images: Any
) -> InteractionHandle:
    handle = await double.slash("imagine", {"prompt": prompt, **images}, user)
    ack = await handle.wait_ack()
    assert ack.accepted
    return handle


async def grid_of(double: DiscordDouble, prompt: str, *, count: int = 1) -> StoredMessage:
    def found() -> StoredMessage | None:
        grids = [
            m
            for m in double.messages(ephemeral=False)
            if len(m.attachments) == 4 and prompt in m.content
        ]
        return grids[count - 1] if len(grids) >= count else None

    return await double.wait_for(found)


def light_square(data: bytes) -> tuple[int, int, int]:
    """The colour of a grid image's top-left square (the sandbox tints it with the inputs')."""
    with Image.open(io.BytesIO(data)) as image:
        pixel = image.convert("RGB").getpixel((0, 0))
    assert isinstance(pixel, tuple)
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


async def kept_count(harness_app: Any) -> int:
    async with harness_app.services.store.engine.connect() as conn:
        return int(
            (await conn.execute(sa.select(sa.func.count()).select_from(image_inputs))).scalar() or 0
        )


async def private_text(handle: InteractionHandle, double: DiscordDouble) -> str:
    """The last private answer with words (a deferred one is empty until it is filled)."""
    return await double.wait_for(
        lambda: next((t for t in reversed(handle.ephemeral_texts()) if t), None)
    )


@pytest.mark.parametrize(
    ("images", "task_type", "ow", "tint"),
    [
        ({"image": ("red.png", png(RED))}, "mj_img2img", None, RED),
        (
            {"image": ("red.png", png(RED)), "image2": ("blue.jpg", png(BLUE, fmt="JPEG"))},
            "mj_img2img",
            None,
            None,
        ),
        ({"style": ("blue.webp", png(BLUE, fmt="WEBP"))}, "mj_style_reference", None, BLUE),
        ({"subject": ("red.gif", png(RED, fmt="GIF"))}, "mj_omni_reference", 100, None),
        (
            {"subject": ("red.png", png(RED)), "subject_strength": 350},
            "mj_omni_reference",
            350,
            RED,
        ),
    ],
    ids=["image", "two images", "style", "subject gif", "subject with strength"],
)
async def test_each_role_reaches_the_api_as_its_task_type_with_images_it_can_fetch(
    harness: Harness,
    images: dict[str, Any],
    task_type: str,
    ow: int | None,
    tint: tuple[int, int, int] | None,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running() as app:
        handle = await imagine_with(double, alice, "a cat in a hat", **images)
        # Deferred: downloading and checking the images may take longer than Discord waits.
        assert handle.ack is not None and handle.ack.type == 5
        assert handle.ack.data.get("flags") == 64
        grid = await grid_of(double, "a cat in a hat")
        assert [b.label for b in grid.buttons()] == GRID_LABELS
        [body] = [c.body for c in sandbox.calls if c.endpoint == "generate"]
        assert body["taskType"] == task_type
        assert body.get("ow") == ow
        attached = [v for k, v in images.items() if k != "subject_strength"]
        assert len(body["fileUrls"]) == len(attached)
        base = app.services.callback_base
        assert all(url.startswith(f"{base}{INPUTS_PATH}") for url in body["fileUrls"])
        # The sandbox fetched each from the bot's listener: the very bytes attached.
        assert [f.sha256 for f in sandbox.fetched] == [sha256(d) for _name, d in attached]
        assert await kept_count(app) == len(attached)
        if tint is not None:
            task = grid_task(grid)
            assert light_square(sandbox.image_bytes(task, 1)) == tint
            assert light_square(grid.attachments[1][1]) == tint


@pytest.mark.parametrize(
    ("images", "reason"),
    [
        ({"image": ("notes.png", b"just some text, not a picture")}, "notes.png is not a PNG"),
        (
            {"style": ("huge.png", png(RED), 11 * 1024 * 1024)},
            "huge.png is larger than 10 MB",
        ),
        (
            {"subject": ("broken.png", png(RED)[:60])},
            "broken.png cannot be read as an image",
        ),
        (
            {"image": ("a.png", png(RED)), "style": ("b.png", png(BLUE))},
            "image and style cannot go together",
        ),
        (
            {"style": ("b.png", png(BLUE)), "subject": ("c.png", png(RED))},
            "style and subject cannot go together",
        ),
        (
            {"image": ("a.png", png(RED)), "subject_strength": 50},
            "subject_strength goes with a subject only",
        ),
        ({"subject": ("c.png", png(RED)), "subject_strength": 1001}, "from 1 to 1000"),
    ],
    ids=[
        "wrong type",
        "too big",
        "unreadable pixels",
        "image and style",
        "style and subject",
        "strength without subject",
        "strength out of range",
    ],
)
async def test_a_refused_image_is_told_privately_and_nothing_is_kept_or_paid(
    harness: Harness, images: dict[str, Any], reason: str
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    credits = sandbox.credits
    async with harness.running() as app:
        handle = await imagine_with(double, alice, "refused", **images)
        text = await private_text(handle, double)
        assert text.startswith("❌") and reason in text, text
        assert not [m for m in double.messages(ephemeral=False) if "refused" in m.content]
        assert sandbox.count("generate") == 0 and not sandbox.fetched
        assert sandbox.credits == credits
        assert await kept_count(app) == 0
        assert await app.services.store.unfinished_keys() == []


async def test_an_image_larger_than_the_setting_is_refused_after_download(
    harness: Harness,
) -> None:
    harness.env["IMAGE_INPUT_MAX_MB"] = "1"
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    noise = Image.frombytes("RGB", (800, 800), bytes(range(256)) * 7500)
    out = io.BytesIO()
    noise.save(out, format="PNG", compress_level=0)
    # Declared small (any client may), really over 1 MB.
    big = out.getvalue()
    assert len(big) > 1024 * 1024
    async with harness.running() as app:
        handle = await imagine_with(double, alice, "big", image=("big.png", big, 1000))
        text = await private_text(handle, double)
        assert "big.png is larger than 1 MB" in text, text
        assert sandbox.count("generate") == 0
        assert await kept_count(app) == 0


async def test_reroll_of_an_image_grid_sends_the_same_images_and_says_so_once_they_expired(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running() as app:
        await imagine_with(double, alice, "a red kite", style=("red.png", png(RED)))
        grid = await grid_of(double, "a red kite")
        handle = await double.click(grid.id, reroll_custom_id(grid_task(grid)), bob)
        await handle.wait_ack()
        rerolled = await grid_of(double, "a red kite", count=2)
        assert "(re-roll)" in rerolled.content
        first, second = [c.body for c in sandbox.calls if c.endpoint == "generate"]
        assert second["taskType"] == first["taskType"] == "mj_style_reference"
        assert second["fileUrls"] == first["fileUrls"]
        assert light_square(rerolled.attachments[1][1]) == RED
        # Expired (IMAGE_INPUT_DAYS later): the next 🔄 says so, nothing stored or paid.
        async with app.services.store.engine.begin() as conn:
            await conn.execute(image_inputs.update().values(expires_at=0))
        await app.services.tracker.sweep()
        assert await kept_count(app) == 0
        credits = sandbox.credits
        handle = await double.click(rerolled.id, reroll_custom_id(grid_task(rerolled)), alice)
        await handle.wait_ack()
        text = await private_text(handle, double)
        assert "no longer kept" in text, text
        assert sandbox.count("generate") == 2 and sandbox.credits == credits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_job_stored_before_a_restart_sends_the_same_images_once(
    harness: Harness,
) -> None:
    """Stopped between the upload and the paid call (a 429 put the job back), the next start
    sends it with the same links, which still serve the same bytes from the store."""
    await harness.standalone()
    port = free_port()
    harness.port = port
    harness.env["PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    sandbox.fail_next("generate", 429)
    async with harness.running():
        await imagine_with(double, alice, "after a restart", image=("red.png", png(RED)))
        await sandbox.wait_for_call("generate")
        await double.wait_for(
            lambda: any("Generating" in m.content for m in double.messages(ephemeral=False)) or None
        )
    assert sandbox.count("generate") == 1 and not sandbox.fetched
    async with harness.running():
        await grid_of(double, "after a restart")
    first, second = [c.body for c in sandbox.calls if c.endpoint == "generate"]
    assert first["fileUrls"] == second["fileUrls"]
    assert [f.sha256 for f in sandbox.fetched] == [sha256(png(RED))]


async def test_without_a_public_address_the_discord_link_is_sent_and_an_expired_one_fails_unpaid(
    harness: Harness,
) -> None:
    await harness.standalone()
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running() as app:
        await imagine_with(double, alice, "linked", image=("red.png", png(RED)))
        grid = await grid_of(double, "linked")
        [body] = [c.body for c in sandbox.calls if c.endpoint == "generate"]
        [url] = body["fileUrls"]
        assert url.startswith(double.base_url) and "ex=" in url
        assert await kept_count(app) == 0
        # A day later the link has expired: the re-roll says so before paying.
        expired = url.replace("ex=", "ex=1&was=")
        async with app.services.store.engine.begin() as conn:
            await conn.execute(
                jobs.update()
                .where(jobs.c.upstream_task_id == grid_task(grid))
                .values(
                    options=json.dumps(
                        {"speed": "fast", "task_type": "mj_img2img", "images": expired}
                    )
                )
            )
        credits = sandbox.credits
        handle = await double.click(grid.id, reroll_custom_id(grid_task(grid)), alice)
        await handle.wait_ack()
        text = await private_text(handle, double)
        assert "Discord links of the images it was made from have expired" in text, text
        assert sandbox.count("generate") == 1 and sandbox.credits == credits


async def test_the_listener_serves_a_kept_image_by_its_token_only_and_never_logs_it(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # A token is never logged above debug (the database driver logs every parameter at debug).
    caplog.set_level(logging.INFO)
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running() as app:
        await imagine_with(double, alice, "served", image=("red.png", png(RED)))
        await grid_of(double, "served")
        [url] = next(c.body for c in sandbox.calls if c.endpoint == "generate")["fileUrls"]
        name = url.rsplit("/", 1)[1]
        token = name.partition(".")[0]
        base = f"{app.services.callback_base}{INPUTS_PATH}"
        session = app.services.session
        async with session.get(url) as response:
            assert response.status == 200 and response.content_type == "image/png"
            assert await response.read() == png(RED)
        for wrong in (
            f"{'A' * 43}.png",
            f"{token}.jpg",
            token,
            f"{token[:-1]}.png",
        ):
            async with session.get(base + wrong) as response:
                assert response.status == 404, wrong
        async with app.services.store.engine.begin() as conn:
            await conn.execute(image_inputs.update().values(expires_at=0))
        async with session.get(url) as response:
            assert response.status == 404
    assert token not in caplog.text
